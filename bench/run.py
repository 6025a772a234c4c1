"""``seqproc bench``: run the strategies side by side, print a table, save JSON and a chart.

Every figure of one invocation comes from the same machine in the same minutes: quote them as ratios against the
baselines run beside them (this machine is shared and noisy; absolute figures move by 25% between runs).
The benchmark uses its own database (``seqproc_bench`` on the configured server) and Redis databases 12-14 on the
configured Redis, and empties them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import make_url

from seqproc.migrations import migrate, migrate_outbox
from seqproc.models.settings import Settings
from seqproc.models.wire import is_cluster_url

from .direct import DirectStrategy
from .harness import DEFAULT_VARIANT, ProducerVariant, RunResult, Strategy, run
from .scenarios import workload
from .seqproc_strategy import OutboxStrategy, SeqprocStrategy
from .writebehind import WriteBehindStrategy

DIRECT = ("atomic", "for_update", "optimistic", "serializable")
STRATEGIES = (*DIRECT, "redis_writebehind", "seqproc_single", "seqproc_batched", "seqproc_outbox")
#: Run only when named: seqproc_batched with the operating extras on (metrics served, JSON logs, task events), to
#: price them against seqproc_batched side by side.
OPTIONAL_STRATEGIES = ("seqproc_observed",)
#: Where results go by default: under the folder the benchmark is run from (never inside an installed package).
RESULTS_DIR = Path("bench") / "results"
BENCH_DATABASE = "seqproc_bench"
#: The soak's workload: producers send likes spread over ``SPREAD_ARTICLES`` (``--scenario`` does not apply to it).
SOAK_SCENARIO = "spread"


def bench_settings(base: Settings, *, database: str = BENCH_DATABASE) -> Settings:
    """The configured servers, with the benchmark's own database (``database``) and Redis databases."""
    url = make_url(base.database_url)
    if url.drivername.startswith("postgresql"):
        url = url.set(database=database)
    if is_cluster_url(base.broker_url):
        # A cluster has database 0 only: the benchmark empties the cluster it is given (its own, then).
        return base.model_copy(update={"database_url": url.render_as_string(hide_password=False)})
    redis_base = base.broker_url.rsplit("/", 1)[0] if base.broker_url.count("/") >= 3 else base.broker_url
    return base.model_copy(
        update={
            "database_url": url.render_as_string(hide_password=False),
            "broker_url": f"{redis_base}/12",
            "result_backend": f"{redis_base}/13",
        }
    )


def make_strategy(
    name: str, settings: Settings, *, workers: int, variant: ProducerVariant = DEFAULT_VARIANT
) -> Strategy:
    """Strategy ``name``; ``variant`` shapes the seqproc strategies' producer processes (the harness applies its
    ``after_sending`` to every strategy)."""
    if name in DIRECT:
        return DirectStrategy(name, settings.database_url)
    if name == "redis_writebehind":
        return WriteBehindStrategy(settings.database_url, settings.broker_url.rsplit("/", 1)[0] + "/14")
    if name in ("seqproc_single", "seqproc_batched", "seqproc_observed"):
        return SeqprocStrategy(name, settings, workers=workers, variant=variant)
    if name == "seqproc_outbox":
        return OutboxStrategy(settings, workers=workers, variant=variant)
    raise ValueError(f"strategy must be one of {', '.join((*STRATEGIES, *OPTIONAL_STRATEGIES))} (got {name!r})")


@dataclass
class Comparison:
    scenario: str
    producers: int
    events_per_producer: int
    workers: int
    results: list[RunResult]
    #: ``threads`` (one process) or ``processes`` (one per producer, the prefork shape).
    mode: str = "threads"
    #: How the producer processes behave (``processes`` only).
    variant: ProducerVariant = DEFAULT_VARIANT

    def by_name(self) -> dict[str, RunResult]:
        return {r.strategy: r for r in self.results}

    def ratios(self) -> dict[str, float]:
        """The targets of the throughput issue, as ratios measured in this run (absent when a side did not run)."""
        r = self.by_name()
        out: dict[str, float] = {}
        batched = r.get("seqproc_batched")
        if batched is None:
            outbox = r.get("seqproc_outbox")
            if outbox is not None and "atomic" in r:
                out["outbox_vs_atomic_events_per_s"] = round(outbox.events_per_s / r["atomic"].events_per_s, 2)
            return out
        for base in ("atomic", "optimistic", "seqproc_single"):
            if base in r:
                out[f"batched_vs_{base}_events_per_s"] = round(batched.events_per_s / r[base].events_per_s, 2)
        if "seqproc_observed" in r:
            out["observed_vs_batched_events_per_s"] = round(
                r["seqproc_observed"].events_per_s / batched.events_per_s, 3
            )
        if "atomic" in r and batched.p99_ms:
            out["atomic_p99_over_batched_p99"] = round(r["atomic"].p99_ms / batched.p99_ms, 2)
        outbox = r.get("seqproc_outbox")
        if outbox is not None:
            out["outbox_vs_batched_events_per_s"] = round(outbox.events_per_s / batched.events_per_s, 2)
            if "atomic" in r:
                out["outbox_vs_atomic_events_per_s"] = round(outbox.events_per_s / r["atomic"].events_per_s, 2)
                if outbox.p99_ms:
                    out["atomic_p99_over_outbox_p99"] = round(r["atomic"].p99_ms / outbox.p99_ms, 2)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "producers": self.producers,
            "producer_kind": self.mode,
            **({"producer_variant": self.variant.to_json()} if self.mode == "processes" else {}),
            "events_per_producer": self.events_per_producer,
            "total_events": self.producers * self.events_per_producer,
            "workers": self.workers,
            "strategies": {r.strategy: r.to_json() for r in self.results},
            "ratios": self.ratios(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def compare(
    settings: Settings,
    scenario: str,
    producers: int,
    events: int,
    strategies: Sequence[str],
    *,
    workers: int,
    mode: str = "threads",
    variant: ProducerVariant = DEFAULT_VARIANT,
    console: Console | None = None,
) -> Comparison:
    variant.check(mode)
    load = workload(scenario, producers, events)
    results = []
    shape = ", ".join([mode, *(f"{k} {v}" for k, v in variant.changed().items())])
    for name in strategies:
        if console:
            console.print(f"[dim]{scenario} P={producers} ({shape}): {name} ...[/dim]")
        strategy = make_strategy(name, settings, workers=workers, variant=variant)
        result = run(strategy, load, database_url=settings.database_url, mode=mode, variant=variant)
        results.append(result)
        if not result.correct:
            raise AssertionError(f"{name} on {scenario} P={producers} is WRONG: {result.detail}")
        time.sleep(0.5)  # let the previous strategy's processes and connections go
    return Comparison(scenario, producers, events, workers, results, mode, variant)


def table(comparison: Comparison) -> Table:
    by = comparison.by_name()
    atomic = by.get("atomic")
    c = comparison
    plural = "es" if c.workers > 1 else ""
    out = Table(
        title=f"{c.scenario}: {c.producers} producer {c.mode} x {c.events_per_producer} events"
        f" ({c.workers} seqproc worker process{plural})"
    )
    for column in ("strategy", "events/s", "x atomic", "p50 ms", "p99 ms", "retries", "db conns", "correct", "notes"):
        out.add_column(column, justify="left" if column in ("strategy", "notes") else "right")
    for r in comparison.results:
        notes = []
        if "events_per_message" in r.extra:
            notes.append(f"{r.extra['events_per_message']} events/msg")
        if "at_risk_max" in r.extra:
            notes.append(f"{r.extra['at_risk_max']} events only in Redis at worst")
        out.add_row(
            r.strategy,
            f"{r.events_per_s:,.0f}",
            f"{r.events_per_s / atomic.events_per_s:.1f}" if atomic else "-",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.retries),
            str(r.connections),
            "yes" if r.correct else "NO",
            "; ".join(notes),
        )
    return out


def save(comparisons: Sequence[Comparison], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in comparisons:
        path = directory / f"{c.scenario}{_mode_suffix(c)}-p{c.producers}.json"
        path.write_text(json.dumps(c.to_json(), indent=2) + "\n")
        paths.append(path)
    return paths


def _mode_suffix(comparison: Comparison) -> str:
    """Results of process producers are kept apart from the threads' (``hot-processes-p16.json``), and each variant
    of them apart from the others (``hot-processes-receipts-drop-p16.json``)."""
    return "" if comparison.mode == "threads" else f"-{comparison.mode}{comparison.variant.suffix()}"


def chart_path(comparisons: Sequence[Comparison], directory: Path) -> Path:
    return directory / f"{comparisons[0].scenario}{_mode_suffix(comparisons[0])}.png"


def chart(comparisons: Sequence[Comparison], path: Path) -> Path:
    """Events/s and p99 call latency per strategy, one group of bars per producer count (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = [s for s in (*STRATEGIES, *OPTIONAL_STRATEGIES) if any(s in c.by_name() for c in comparisons)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    width = 0.8 / max(1, len(comparisons))
    for n, c in enumerate(comparisons):
        by = c.by_name()
        xs = [i + n * width for i in range(len(strategies))]
        top.bar(xs, [by[s].events_per_s if s in by else 0 for s in strategies], width, label=f"P={c.producers}")
        bottom.bar(xs, [by[s].p99_ms if s in by else 0 for s in strategies], width, label=f"P={c.producers}")
    top.set_yscale("log")
    top.set_ylabel("events/s, end to end (log)")
    bottom.set_yscale("log")
    bottom.set_ylabel("producer call p99, ms (log)")
    bottom.set_xticks([i + width * (len(comparisons) - 1) / 2 for i in range(len(strategies))])
    bottom.set_xticklabels(strategies, rotation=20)
    scenario = comparisons[0].scenario
    mode = comparisons[0].mode
    top.set_title(f"seqproc bench, scenario '{scenario}' ({os.cpu_count()} cores, producers are {mode})")
    top.legend()
    top.grid(axis="y", alpha=0.3)
    bottom.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def prepare(settings: Settings) -> None:
    migrate(settings.database_url)
    migrate_outbox(settings.outbox_url)


def soak_command(*, duration_s: float, producers: int) -> str:
    """The ``seqproc bench`` command line that runs this soak again."""
    seconds = int(duration_s) if float(duration_s).is_integer() else duration_s
    return f"seqproc bench --soak-s {seconds} --producers {producers}"


def soak(settings: Settings, *, duration_s: float, producers: int, sample_every_s: float = 10.0) -> dict[str, Any]:
    """seqproc_batched on the spread scenario for ``duration_s``, producers sending as fast as they can, the
    worker's resident memory sampled all along: it must stay flat (within 20% of its value after warm-up). Events/s
    are counted until the last event sent is applied."""
    import threading

    from seqproc import producer as producer_api

    from .scenarios import SPREAD_ARTICLES
    from .seqproc_strategy import SeqprocStrategy

    strategy = SeqprocStrategy("seqproc_batched", settings, workers=1)
    strategy.setup(workload(SOAK_SCENARIO, 1, 1))
    assert strategy.group is not None
    stop = threading.Event()
    sent = [0] * producers

    def produce(index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            producer_api.like(1 + n % SPREAD_ARTICLES, index * 100_000_000 + n)
            sent[index] += 1

    threads = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(producers)]
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < duration_s:
            samples.append((round(elapsed, 1), round(strategy.group.rss_mb()[0], 1)))
            time.sleep(sample_every_s)
        stop.set()
        for thread in threads:
            thread.join(30)
        sending_s = time.monotonic() - started
        # Until every event sent is applied (the producers outrun the worker: a backlog waits in Redis).
        strategy.expect(sum(sent))  # the soak's own count, not its placeholder workload's
        strategy.drain(max(600.0, 4 * duration_s))
        total_s = time.monotonic() - started
    finally:
        strategy.teardown()
    warm = [rss for t, rss in samples if t >= min(60.0, duration_s / 5)] or [rss for _, rss in samples]
    baseline = warm[0]
    return {
        "scenario": SOAK_SCENARIO,
        "producers": producers,
        "command": soak_command(duration_s=duration_s, producers=producers),
        "duration_s": round(total_s, 1),
        # The producers' part of duration_s; the rest, the worker applying what they had sent.
        "sending_s": round(sending_s, 1),
        "events": sum(sent),
        "events_per_s": round(sum(sent) / total_s, 1),
        "rss_mb_after_warmup": baseline,
        "rss_mb_last": warm[-1],
        "rss_mb_max": max(warm),
        "flat_within_20_percent": max(warm) <= baseline * 1.2,
        "samples": samples,
    }
