"""seqproc itself, as the benchmark runs it: real worker processes, the producer API from each producer thread,
the clock stopped when the last event is applied (read from the partitions' counters, committed with each batch).

- ``seqproc_single``: one event per message and one per transaction (batch size 1, no packing): the naive design;
- ``seqproc_batched``: the defaults: producer group commit, several messages per transaction.
- ``seqproc_observed`` (only when named): seqproc_batched with Prometheus metrics served, JSON logs at INFO and Celery
  task events on: what operating it costs.
- ``seqproc_outbox``: each call is its own PostgreSQL transaction that writes the event to the transactional outbox
  (``seqproc.outbox``, the producer's own connection, as a web request would in its transaction); one ``seqproc
  relay`` sends them to the partition queues, many per message; the same workers apply them.

With process producers, a ``ProducerVariant`` may drop the receipts, leave the connecting to the first call, send
a warm-up like first, or have the processes exit after sending: the clock still stops when the partitions' counters
say that every event was applied, and the check reads the database's state (the outcomes too, when kept).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import func, select, text

import seqproc
from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import RELAY_PUSHED_PREFIX
from seqproc.producer.publish import publisher_for
from seqproc.producer.receipt import Receipt
from seqproc.worker.ops.inspect import article_state, check_invariants, product_state
from seqproc.worker.processes import WorkerGroup, settings_env, split_partitions

from .harness import DEFAULT_VARIANT, ProducerVariant, harness_engine, process_cpu_s, runqueue_wait_s
from .scenarios import WARM_UP_ARTICLE, Op, Workload

DATA_TABLES = (
    "article_like, article_unlike, article_like_count, product_stock, reservation, idempotency_ledger, dead_letter"
)


def strategy_settings(name: str, base: Settings) -> Settings:
    if name == "seqproc_single":
        return base.model_copy(update={"batch_size": 1, "max_events_per_message": 1, "linger_ms": 0})
    if name == "seqproc_observed":
        with socket.socket() as sock:  # a free port for the one worker's metrics endpoint
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        return base.model_copy(
            update={"metrics_port": port, "log_format": "json", "log_level": "INFO", "task_events": True}
        )
    return base.model_copy(update={"metrics_port": 0})


class SeqprocStrategy:
    def __init__(
        self, name: str, settings: Settings, *, workers: int, variant: ProducerVariant = DEFAULT_VARIANT
    ) -> None:
        self.name = name
        self.settings = strategy_settings(name, settings)
        self.workers = workers
        self.variant = variant
        self._keep = variant.receipts == "keep"
        #: Events the run sends (its workload's, set up), and how many warm-up likes the producers send.
        self._total = self._warm_ups = 0
        self.engine = harness_engine(self.settings.database_url)  # not counted in "db conns"
        self.receipts: list[list[Receipt]] = []
        self.group: WorkerGroup | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="seqproc-bench-")
        self._baseline = 0
        self._cpu_at_start = self._cpu_at_end = (0.0, 0.0)
        #: When the drain began (the last producer call had returned): events applied, the workers' CPU s and
        #: runqueue wait s, monotonic s; and when it ended (the workers' runqueue wait s, monotonic s).
        self._at_sent = (0, 0.0, 0.0, 0.0)
        self._drained = (0.0, 0.0)
        self.rss_samples: list[list[float]] = []
        self.statuses: Counter[str] = Counter()
        #: Whether ``statuses`` were read: the receipts kept, and their producers there after the drain.
        self.statuses_read = False
        self.sent_messages = 0
        self.sent_events = 0

    def setup(self, workload: Workload) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {DATA_TABLES}"))
        for url in (self.settings.broker_url, self.settings.result_backend):
            redis.Redis.from_url(url).flushdb()
        self.group = WorkerGroup(
            self.settings, split_partitions(self.settings.partitions, self.workers), Path(self._directory.name)
        )
        self.group.wait_ready()  # on failure, teardown() stops the group
        producer.configure(self.settings)
        publisher = publisher_for(self.settings)
        publisher.sent_messages = publisher.sent_events = 0
        if workload.stock:
            producer.restock(1, workload.stock).wait(timeout_s=60)
        self._baseline = self._applied()
        self._total = workload.total
        self._warm_ups = workload.producers if self.variant.warm_up == "other-article" else 0
        self.receipts = [[] for _ in range(workload.producers)]
        self.rss_samples = [self.group.rss_mb()]
        self._cpu_at_start = self.service_cpu_s()

    def _applied(self) -> int:
        table = Partition.__table__
        with self.engine.connect() as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(table.c.applied + table.c.duplicates + table.c.rejected), 0))
            ).scalar_one()
        return int(total)

    def producer(self, index: int) -> Callable[[Op], int]:
        mine = self.receipts[index]
        keep = self._keep

        def call(op: Op) -> int:
            if op.kind == "reserve":
                receipt = producer.reserve(op.entity, 1, reservation_id=f"r{op.n}")
            else:
                receipt = producer.like(op.entity, op.n)
            if keep:
                mine.append(receipt)
            return 0

        return call

    def warm(self, index: int) -> None:
        """In a forked producer process, before the clock: connected to the broker (``seqproc.connect()``, what a
        prefork server's post-fork hook calls) unless the variant leaves it to the first call, its warm-up like
        sent if the variant has one, counters at zero."""
        if self.variant.connect == "hook":
            producer.connect()
        if self.variant.warm_up == "other-article":
            self.warm_up(index)
        publisher = publisher_for(self.settings)
        publisher.sent_messages = publisher.sent_events = 0

    def warm_up(self, index: int) -> None:
        """Producer ``index``'s warm-up like on ``WARM_UP_ARTICLE`` (its receipt not kept)."""
        producer.like(WARM_UP_ARTICLE, index + 1)

    def settle(self, timeout_s: float) -> None:
        """Before the clock, the producers ready: the warm-up likes applied; the run's events are counted from
        here."""
        self._wait_applied(self._baseline + self._warm_ups, timeout_s)
        self._baseline = self._applied()

    def report(self, index: int) -> dict[str, Any]:
        """What the producer sent; the outcomes of its receipts when kept and the drain is over (a producer that
        exits after sending does not wait for them)."""
        publisher = publisher_for(self.settings)
        out: dict[str, Any] = {"sent_messages": publisher.sent_messages, "sent_events": publisher.sent_events}
        if self._keep and self.variant.after_sending == "stay":
            out["statuses"] = self._statuses(self.receipts[index])
        return out

    def _statuses(self, receipts: list[Receipt]) -> Counter[str]:
        return Counter(o.status for o in producer.wait_all(receipts, timeout_s=60))

    def absorb(self, reports: list[dict[str, Any]], *, processes: bool) -> None:
        self.statuses_read = all("statuses" in r for r in reports)
        self.statuses = sum((Counter(r.get("statuses", {})) for r in reports), Counter())
        # Threads share the process's one publisher (each report repeats its totals); processes have their own.
        pick = sum if processes else max
        self.sent_messages = pick(r["sent_messages"] for r in reports)
        self.sent_events = pick(r["sent_events"] for r in reports)

    def expect(self, events: int) -> None:
        """The drain waits for ``events`` applied since the setup, when they were not sent as a workload's (the
        soak's producers send until stopped)."""
        self._total = events

    def drain(self, timeout_s: float) -> None:
        """Until the partitions' counters (committed with each batch) have counted every event of the workload:
        counted from the workload, not from receipts, which forked producers keep in their own memory."""
        assert self.group is not None
        pids = self.group.pids
        cpu_s, waited_s = sum(process_cpu_s(p) for p in pids), sum(runqueue_wait_s(p) for p in pids)
        self._at_sent = (self._applied(), cpu_s, waited_s, time.monotonic())
        self._wait_applied(self._baseline + self._total, timeout_s)
        self._drained = (sum(runqueue_wait_s(p) for p in pids), time.monotonic())
        self.rss_samples.append(self.group.rss_mb())
        self._cpu_at_end = self.service_cpu_s()

    def _wait_applied(self, expected: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (applied := self._applied()) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {expected - applied} events not applied in {timeout_s} s")
            time.sleep(0.01)

    def service_cpu_s(self) -> tuple[float, float]:
        """CPU seconds so far of the worker processes, and of the Redis server (all of it: broker and results)."""
        assert self.group is not None
        info = redis.Redis.from_url(self.settings.broker_url).info("cpu")
        return (
            sum(process_cpu_s(pid) for pid in self.group.pids),
            float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        )

    def verify(self, workload: Workload) -> tuple[bool, str, dict[str, Any]]:
        statuses = self.statuses
        (worker_before, redis_before), (worker_after, redis_after) = self._cpu_at_start, self._cpu_at_end
        extra: dict[str, Any] = {
            "events_per_message": round(self.sent_events / max(1, self.sent_messages), 1),
            # From the workers' start-up to the drain's end (the clock's span, plus the idle moments around it):
            # CPU per event of the worker processes, and of the Redis server.
            "worker_cpu_us_per_event": round((worker_after - worker_before) / max(1, workload.total) * 1e6, 1),
            "redis_cpu_us_per_event": round((redis_after - redis_before) / max(1, workload.total) * 1e6, 1),
            # The apply lag: events not yet applied when the last producer call returned; while the workers applied
            # them (about elapsed_s - sent_s), how much of a core they got, and how long they waited for one.
            "unapplied_at_sent": self._baseline + self._total - self._at_sent[0],
            "worker_cores_in_tail": round(
                (worker_after - self._at_sent[1]) / max(1e-6, self._drained[1] - self._at_sent[3]), 2
            ),
            "worker_waited_for_cpu_in_tail_s": round(self._drained[0] - self._at_sent[2], 3),
            "workers": self.workers,
            "worker_rss_mb": [round(x, 1) for x in self.rss_samples[-1]],
        }
        # The database's state against the workload's model; the outcomes too when the receipts were read.
        outcomes = f", outcomes {dict(statuses)}" if self.statuses_read else ", outcomes not read"
        with self.engine.connect() as conn:
            invariants = check_invariants(conn)
            warmed = article_state(conn, WARM_UP_ARTICLE)["like_count"] == self._warm_ups
            if workload.scenario == "flash":
                state = product_state(conn, 1)
                sold = min(workload.stock, workload.total)
                ok = (
                    invariants.ok
                    and warmed
                    and state["reserved"] == sold
                    and state["available"] == workload.stock - sold
                    and (
                        not self.statuses_read
                        or statuses == Counter({"applied": sold, "rejected": workload.total - sold})
                    )
                )
                detail = f"reserved {state['reserved']} of {workload.stock} (demand {workload.total}){outcomes}"
                return ok, detail, extra
            expected = workload.expected_likes()
            bad = [a for a, n in expected.items() if article_state(conn, a)["like_count"] != n]
            ok = (
                invariants.ok
                and warmed
                and not bad
                and (not self.statuses_read or statuses == Counter({"applied": workload.total}))
            )
            return ok, f"{sum(expected.values())} likes expected, {len(bad)} articles off{outcomes}", extra

    def teardown(self) -> None:
        if self.group is not None:
            self.group.stop()
            self.group = None
        producer.configure(None)
        self.engine.dispose()
        self._directory.cleanup()


def relay_pushed_messages(broker_url: str) -> int:
    """The messages the relay pushed so far: its per-queue counts in the broker."""
    client = redis.Redis.from_url(broker_url)
    return sum(int(client.get(key) or 0) for key in client.scan_iter(f"{RELAY_PUSHED_PREFIX}*"))


class OutboxStrategy(SeqprocStrategy):
    """``seqproc_outbox``: every call a transaction of the producer's own that writes its event to the outbox; a
    ``seqproc relay`` process sends them, the workers apply them. The clock stops when the last one is applied."""

    def __init__(self, settings: Settings, *, workers: int, variant: ProducerVariant = DEFAULT_VARIANT) -> None:
        super().__init__("seqproc_outbox", settings, workers=workers, variant=variant)
        self.relay: subprocess.Popen[bytes] | None = None
        self._connections: list[psycopg.Connection[Any]] = []
        self._conn: psycopg.Connection[Any] | None = None

    def setup(self, workload: Workload) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE seqproc_outbox, seqproc_outbox_relay"))
        super().setup(workload)
        directory = Path(self._directory.name)
        ready = directory / "relay.ready"
        log = (directory / "relay.log").open("ab")
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "seqproc", "relay", "--loglevel", "WARNING", "--ready-file", str(ready)],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not start; see {directory / 'relay.log'}")
            time.sleep(0.05)

    def producer(self, index: int) -> Callable[[Op], int]:
        conn = psycopg.connect(self.settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1))
        self._connections.append(conn)
        self._conn = conn  # this producer's (a forked process has one; its warm-up goes on it)
        mine = self.receipts[index]
        keep = self._keep

        def call(op: Op) -> int:
            with conn.transaction():  # the request's own transaction: its event is sent iff it commits
                if op.kind == "reserve":
                    receipt = seqproc.outbox.reserve(conn, op.entity, 1, reservation_id=f"r{op.n}")
                else:
                    receipt = seqproc.outbox.like(conn, op.entity, op.n)
            if keep:
                mine.append(receipt)
            return 0

        return call

    def warm(self, index: int) -> None:
        """The connection is open (``producer``); the warm-up, if any, goes through the outbox as the calls do
        (nothing here connects to the broker: the relay sends)."""
        if self.variant.warm_up == "other-article":
            self.warm_up(index)

    def warm_up(self, index: int) -> None:
        assert self._conn is not None  # producer(index) opened it
        with self._conn.transaction():
            seqproc.outbox.like(self._conn, WARM_UP_ARTICLE, index + 1)

    def report(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {"sent_messages": 0, "sent_events": 0}
        if self._keep and self.variant.after_sending == "stay":
            out["statuses"] = self._statuses(self.receipts[index])
        return out

    def absorb(self, reports: list[dict[str, Any]], *, processes: bool) -> None:
        super().absorb(reports, processes=processes)
        # What the relay pushed: its per-queue counts in the broker (events: every one sent once).
        self.sent_messages = relay_pushed_messages(self.settings.broker_url)
        self.sent_events = self._total + self._warm_ups

    def teardown(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        if self.relay is not None:
            self.relay.send_signal(signal.SIGTERM)
            try:
                self.relay.wait(30)
            except subprocess.TimeoutExpired:
                self.relay.kill()
            self.relay = None
        super().teardown()
