"""The results of ``seqproc bench --server``: per strategy and side by side, as JSON (``server-<server>.json``), a
table and a chart (``server-<server>.png``). Ratios are against the no-op endpoint (the server's own ceiling) and the
atomic update, run in the same command."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from .wrk import WrkResult

if TYPE_CHECKING:
    from .server_run import ServerLoad

#: The strategies whose events are applied after the response: their ratios are the issue's targets.
ASYNCHRONOUS = ("seqproc", "outbox")


@dataclass
class ServerResult:
    strategy: str
    wrk: WrkResult
    #: Requests the server's processes answered with their effect done (counted by each process).
    accepted: int
    #: From wrk's start until the like count reached ``accepted`` (no-op: until wrk exited).
    elapsed_s: float
    like_rows: int | None
    like_count: int | None
    correct: bool
    detail: str
    server_cpu_us_per_request: float
    worker_cpu_us_per_event: float | None = None
    relay_cpu_us_per_event: float | None = None
    redis_cpu_us_per_event: float | None = None
    events_per_message: float | None = None

    @property
    def events_per_s(self) -> float:
        """Accepted requests per second, counted until the last one was applied."""
        return round(self.accepted / self.elapsed_s, 1) if self.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        w = self.wrk
        return {
            "strategy": self.strategy,
            "endpoint": f"/{self.strategy}",
            "requests": w.requests,
            "responses_2xx": w.responses_2xx,
            "non_2xx": w.non_2xx,
            "socket_errors": w.errors,
            "wrk_duration_s": round(w.duration_s, 3),
            "requests_per_s": round(w.requests_per_s, 1),
            "p50_ms": w.latency_ms["p50"],
            "p90_ms": w.latency_ms["p90"],
            "p99_ms": w.latency_ms["p99"],
            "max_ms": w.latency_ms["max"],
            "mean_ms": w.latency_ms["mean"],
            "accepted": self.accepted,
            "elapsed_s": self.elapsed_s,
            "events_per_s": self.events_per_s,
            "like_rows": self.like_rows,
            "like_count": self.like_count,
            "correct": self.correct,
            "detail": self.detail,
            "server_cpu_us_per_request": self.server_cpu_us_per_request,
            "wrk_cpu_us_per_request": round(w.cpu_s / max(1, w.requests) * 1e6, 1),
            "worker_cpu_us_per_event": self.worker_cpu_us_per_event,
            "relay_cpu_us_per_event": self.relay_cpu_us_per_event,
            "redis_cpu_us_per_event": self.redis_cpu_us_per_event,
            "events_per_message": self.events_per_message,
        }


@dataclass
class ServerComparison:
    load: ServerLoad
    results: list[ServerResult]

    def by_name(self) -> dict[str, ServerResult]:
        return {r.strategy: r for r in self.results}

    def times(self, result: ServerResult, base: str) -> float | None:
        """``result``'s events/s over the ``base`` strategy's, when both ran."""
        other = self.by_name().get(base)
        if other is None or not other.events_per_s:
            return None
        return round(result.events_per_s / other.events_per_s, 2)

    def ratios(self) -> dict[str, float]:
        """The issue's targets, as measured in this run: seqproc's and the outbox's events/s against the no-op's and
        the atomic update's (and the broker floor's: the most any broker-backed 202 can do), and their p99 over the
        no-op's."""
        by = self.by_name()
        out: dict[str, float] = {}
        for name in ASYNCHRONOUS:
            result = by.get(name)
            if result is None:
                continue
            for base in ("noop", "atomic", "broker"):
                ratio = self.times(result, base)
                if ratio is not None:
                    out[f"{name}_vs_{base}_events_per_s"] = ratio
            noop = by.get("noop")
            if noop is not None and noop.wrk.latency_ms["p99"]:
                out[f"{name}_p99_over_noop_p99"] = round(result.wrk.latency_ms["p99"] / noop.wrk.latency_ms["p99"], 2)
        return out

    def command(self) -> str:
        load = self.load
        return (
            f"seqproc bench --server {load.server} --server-workers {load.server_workers} --connections "
            f"{load.connections} --threads {load.threads} --duration-s {load.duration_s} --strategies "
            f"{','.join(r.strategy for r in self.results)}"
        )

    def to_json(self) -> dict[str, Any]:
        load = self.load
        return {
            "server": load.server,
            "server_workers": load.server_workers,
            "connections": load.connections,
            "threads": load.threads,
            "duration_s": load.duration_s,
            "workers": load.workers,
            "article_id": load.article,
            "command": self.command(),
            "strategies": {
                r.strategy: r.to_json() | {"x_noop": self.times(r, "noop"), "x_atomic": self.times(r, "atomic")}
                for r in self.results
            },
            "ratios": self.ratios(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def _figure(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def table(comparison: ServerComparison) -> Table:
    load = comparison.load
    out = Table(
        title=f"{load.server} ({load.server_workers} workers), wrk {load.threads} threads x {load.connections} "
        f"connections x {load.duration_s} s, every request a new like on article {load.article}"
    )
    columns = (
        "strategy",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "events/s applied",
        "x no-op",
        "x atomic",
        "count check",
        "worker us/ev",
        "relay us/ev",
        "redis us/ev",
        "server us/req",
        "events/msg",
    )
    for column in columns:
        out.add_column(column, justify="left" if column in ("strategy", "count check") else "right")
    for r in comparison.results:
        checked = "-" if r.like_count is None else "yes"
        out.add_row(
            r.strategy,
            _figure(r.wrk.requests_per_s),
            f"{r.wrk.latency_ms['p50']:.1f}",
            f"{r.wrk.latency_ms['p99']:.1f}",
            _figure(r.events_per_s),
            _figure(comparison.times(r, "noop"), ".2f"),
            _figure(comparison.times(r, "atomic"), ".2f"),
            checked if r.correct else "NO",
            _figure(r.worker_cpu_us_per_event, ",.1f"),
            _figure(r.relay_cpu_us_per_event, ",.1f"),
            _figure(r.redis_cpu_us_per_event, ",.1f"),
            _figure(r.server_cpu_us_per_request, ",.1f"),
            _figure(r.events_per_message, ".1f"),
        )
    return out


def save(comparison: ServerComparison, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"server-{comparison.load.server}.json"
    path.write_text(json.dumps(comparison.to_json(), indent=2) + "\n")
    return path


def chart(comparison: ServerComparison, directory: Path) -> Path:
    """Per strategy: wrk's requests/s beside the events/s counted until applied; p50 and p99 latency (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results: Sequence[ServerResult] = comparison.results
    names = [r.strategy for r in results]
    xs = range(len(results))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.bar([x - 0.2 for x in xs], [r.wrk.requests_per_s for r in results], 0.4, label="requests/s (wrk)")
    top.bar([x + 0.2 for x in xs], [r.events_per_s for r in results], 0.4, label="events/s, until applied")
    top.set_ylabel("per second")
    bottom.bar([x - 0.2 for x in xs], [r.wrk.latency_ms["p50"] for r in results], 0.4, label="p50")
    bottom.bar([x + 0.2 for x in xs], [r.wrk.latency_ms["p99"] for r in results], 0.4, label="p99")
    bottom.set_yscale("log")
    bottom.set_ylabel("request latency, ms (log)")
    bottom.set_xticks(list(xs))
    bottom.set_xticklabels(names)
    load = comparison.load
    top.set_title(
        f"seqproc bench --server {load.server} ({load.server_workers} workers; wrk {load.connections} connections; "
        f"{os.cpu_count()} cores)"
    )
    for axis in (top, bottom):
        axis.legend()
        axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = directory / f"server-{load.server}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
