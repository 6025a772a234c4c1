"""``seqproc bench --server gunicorn|uvicorn``: the strategies as users run them, behind a real web server under HTTP
load, beside the server's own no-op ceiling.

Per strategy: a fresh server (``bench/servers.py``) serving the app's endpoint, ``wrk`` sending likes by new users on
one hot article for ``duration_s``, then the server stopped gracefully, so that every process's count of accepted
requests is final. The clock runs from wrk's start until the like count reaches the accepted requests (sampled
every few milliseconds all along); the count check wants like rows == like_count == accepted requests. Alongside:
wrk's requests/s and latency, and the CPU per event of the seqproc worker, the relay, Redis and the server.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import text

from seqproc.models.settings import Settings
from seqproc.models.tables.likes import ArticleLikeCount
from seqproc.worker.ops.inspect import article_state, check_invariants

from . import wrk
from .cpu import redis_cpu_s
from .direct import libpq_url, reset_tables
from .harness import DRAIN_TIMEOUT_S, HARNESS_APPLICATION_NAME, harness_engine, process_cpu_s
from .scenarios import HOT_ARTICLE, workload
from .seqproc_strategy import OutboxStrategy, SeqprocStrategy, relay_pushed_messages
from .server_report import ServerComparison, ServerResult
from .servers import FLOOR_KEY, ServerProcess

#: The endpoints, in the order they run (the baselines first). ``broker`` is the floor of any broker-backed 202: one
#: plain-socket LPUSH of a message as long as seqproc's per request (``web/seqproc_bench_app.BrokerFloor``).
SERVER_STRATEGIES = ("noop", "atomic", "broker", "seqproc", "outbox")
#: How often the like count is read while the clock runs: the clock's resolution.
SAMPLE_EVERY_S = 0.01


@dataclass(frozen=True)
class ServerLoad:
    server: str
    server_workers: int
    connections: int
    threads: int
    duration_s: int
    #: seqproc worker processes.
    workers: int = 1
    article: int = HOT_ARTICLE


class CountSampler:
    """Reads one article's like count every ``SAMPLE_EVERY_S`` on a connection of its own (the harness's name):
    :meth:`reached` is when it first saw a count."""

    def __init__(self, url: str, table: str, article: int) -> None:
        self.samples: list[tuple[float, int]] = []
        self._query = f"SELECT like_count FROM {table} WHERE article_id = %s"
        self._article = article
        self._conn = psycopg.connect(libpq_url(url), autocommit=True, application_name=HARNESS_APPLICATION_NAME)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="count-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            row = self._conn.execute(self._query, (self._article,)).fetchone()
            self.samples.append((time.perf_counter(), int(row[0]) if row else 0))
            self._stop.wait(SAMPLE_EVERY_S)

    def reached(self, count: int, *, timeout_s: float) -> float | None:
        """The time of the first sample at ``count`` or above, waiting up to ``timeout_s``; None if not reached."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for at, value in self.samples[seen:]:
                if value >= count:
                    return at
            seen = len(self.samples)
            if time.monotonic() > deadline or not self._thread.is_alive():
                return None
            time.sleep(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


@dataclass
class Backend:
    """What runs behind one endpoint: the tables it writes and, for seqproc, its worker (and relay)."""

    name: str
    settings: Settings
    workers: int
    seqproc: SeqprocStrategy | None = None
    cpu_at: dict[str, float] = field(default_factory=dict)

    def setup(self) -> None:
        load = workload("hot", 1, 1)
        if self.name == "atomic":
            reset_tables(self.settings.database_url, load)  # bench_like and bench_like_count, article 1 at 0
        elif self.name == "seqproc":
            self.seqproc = SeqprocStrategy("seqproc_batched", self.settings, workers=self.workers)
        elif self.name == "outbox":
            self.seqproc = OutboxStrategy(self.settings, workers=self.workers)
        elif self.name == "broker":
            self.floor_list().delete(FLOOR_KEY)
        if self.seqproc is not None:
            self.seqproc.setup(load)  # emptied tables and Redis, workers (and the relay) started and ready

    def floor_list(self) -> redis.Redis:
        """The broker floor's Redis (the benchmark's broker)."""
        return redis.Redis.from_url(self.settings.broker_url)

    def floor_length(self) -> int:
        """How many messages the floor's list holds: what the broker took, counted by the broker."""
        return int(self.floor_list().llen(FLOOR_KEY))

    @property
    def count_table(self) -> str | None:
        if self.name in ("noop", "broker"):
            return None
        return "bench_like_count" if self.name == "atomic" else ArticleLikeCount.__tablename__

    def mark_cpu(self, moment: str) -> None:
        """CPU seconds so far of the worker processes, Redis and the relay (for seqproc; Redis for the floor)."""
        if self.name == "broker":
            self.cpu_at[f"redis_{moment}"] = redis_cpu_s(self.floor_list())
        if self.seqproc is None:
            return
        worker_s, redis_s = self.seqproc.service_cpu_s()
        self.cpu_at[f"worker_{moment}"], self.cpu_at[f"redis_{moment}"] = worker_s, redis_s
        relay = getattr(self.seqproc, "relay", None)
        if relay is not None:
            self.cpu_at[f"relay_{moment}"] = process_cpu_s(relay.pid)

    def cpu_us_per_event(self, what: str, events: int) -> float | None:
        if f"{what}_start" not in self.cpu_at:
            return None
        return round((self.cpu_at[f"{what}_end"] - self.cpu_at[f"{what}_start"]) / max(1, events) * 1e6, 1)

    def state(self, article: int) -> tuple[int, int, str]:
        """Like rows and like_count of the article, and what else is wrong (seqproc's invariants)."""
        engine = harness_engine(self.settings.database_url)
        try:
            with engine.connect() as conn:
                if self.name == "atomic":
                    rows, count = conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM bench_like WHERE article_id = :a), "
                            "(SELECT like_count FROM bench_like_count WHERE article_id = :a)"
                        ),
                        {"a": article},
                    ).one()
                    return int(rows), int(count), ""
                state = article_state(conn, article)
                invariants = check_invariants(conn)
                return state["likes"], state["like_count"], "" if invariants.ok else "; ".join(invariants.violations)
        finally:
            engine.dispose()

    def teardown(self) -> None:
        if self.name == "broker":
            self.floor_list().delete(FLOOR_KEY)
        if self.seqproc is not None:
            self.seqproc.teardown()
            self.seqproc = None


def count_problems(
    figures: wrk.WrkResult, accepted: int, rows: int | None, count: int | None, *, connections: int
) -> list[str]:
    """What is wrong with the counts of a run (nothing: it is correct). ``rows`` and ``count``: the article's like
    rows and like_count, None for the no-op."""
    problems = []
    if rows is not None and not rows == count == accepted:
        problems.append(f"{rows} like rows, like_count {count}, {accepted} requests accepted")
    if figures.non_2xx:
        problems.append(f"{figures.non_2xx} responses were not 2xx")
    if not figures.responses_2xx <= accepted <= figures.responses_2xx + connections:
        # At most one request per connection can be in flight when wrk stops: answered, but not read by wrk.
        problems.append(f"{accepted} requests accepted by the server, wrk read {figures.responses_2xx} 2xx")
    return problems


def run_strategy(name: str, load: ServerLoad, settings: Settings, directory: Path) -> ServerResult:
    backend = Backend(name, settings, load.workers)
    server: ServerProcess | None = None
    sampler: CountSampler | None = None
    process = None
    try:
        backend.setup()
        served = backend.seqproc.settings if backend.seqproc is not None else settings
        server = ServerProcess(load.server, served, workers=load.server_workers, directory=directory)
        server.wait_ready()
        table = backend.count_table
        sampler = CountSampler(settings.database_url, table, load.article) if table else None
        backend.mark_cpu("start")
        server_cpu_start = server.cpu_s()
        started = time.perf_counter()
        process = wrk.start(
            f"{server.url}/{name}",
            threads=load.threads,
            connections=load.connections,
            duration_s=load.duration_s,
            article=load.article,
        )
        figures = wrk.finish(process)
        wrk_s = time.perf_counter() - started
        server_cpu_s = server.cpu_s() - server_cpu_start
        server.stop()  # graceful: what was in flight when wrk stopped is answered, and counted
        accepted, messages, events = server.counts()
        elapsed_s = wrk_s
        rows = count = None
        problems = []
        if sampler is not None:
            applied_at = sampler.reached(accepted, timeout_s=DRAIN_TIMEOUT_S)
            if applied_at is None:
                problems.append(f"like_count did not reach {accepted} within {DRAIN_TIMEOUT_S} s")
            else:
                elapsed_s = applied_at - started
            backend.mark_cpu("end")
            rows, count, invariants = backend.state(load.article)
            problems += [invariants] if invariants else []
        elif name == "broker":
            backend.mark_cpu("end")
            held = backend.floor_length()
            if held != accepted:
                problems.append(f"the broker holds {held} floor messages, {accepted} requests accepted")
        problems += count_problems(figures, accepted, rows, count, connections=load.connections)
        if figures.non_2xx:
            problems.append(f"the server's log: {server.log_tail(1500)}")
        if name == "outbox":
            messages = relay_pushed_messages(settings.broker_url)
            events = accepted
        return ServerResult(
            strategy=name,
            wrk=figures,
            accepted=accepted,
            elapsed_s=round(elapsed_s, 3),
            like_rows=rows,
            like_count=count,
            correct=not problems,
            detail="; ".join(problems) or f"{accepted} accepted" + (", each applied once" if sampler else ""),
            server_cpu_us_per_request=round(server_cpu_s / max(1, accepted) * 1e6, 1),
            worker_cpu_us_per_event=backend.cpu_us_per_event("worker", accepted),
            relay_cpu_us_per_event=backend.cpu_us_per_event("relay", accepted),
            redis_cpu_us_per_event=backend.cpu_us_per_event("redis", accepted),
            events_per_message=round(events / messages, 1) if messages else None,
        )
    finally:
        if process is not None:
            wrk.stop(process)
        if sampler is not None:
            sampler.stop()
        if server is not None:
            server.stop()
        backend.teardown()


def compare(settings: Settings, load: ServerLoad, strategies: list[str], *, console: Any = None) -> ServerComparison:
    import tempfile

    results = []
    for name in strategies:
        if console is not None:
            console.print(f"[dim]{load.server} x {load.server_workers}: {name} ...[/dim]")
        with tempfile.TemporaryDirectory(prefix="seqproc-bench-server-") as directory:
            result = run_strategy(name, load, settings, Path(directory))
        results.append(result)
        if not result.correct:
            raise AssertionError(f"{name} behind {load.server} is WRONG: {result.detail}")
        time.sleep(0.5)  # let the previous strategy's processes and connections go
    return ServerComparison(load, results)
