"""Prometheus metrics of a worker (prometheus-client), served over HTTP on ``SEQPROC_METRICS_PORT`` (0: off).

Counted after each commit, so a rolled-back or retried transaction never counts twice: this module subscribes to
the worker's lifecycle hooks (``worker.hooks``: its functions ``after_commit``, ``after_settle`` and
``on_dead_letter``) when the worker serves the metrics, and the batcher never calls it:

- ``seqproc_events_applied_total{partition,type}``
- ``seqproc_events_duplicate_total{partition,type}``: events whose idempotency key was already applied
- ``seqproc_events_rejected_total{partition,type,reason}``: refused by a rule (``insufficient_stock``, ``stale``,
  ...); dead-lettered and parked events are counted in the next one only
- ``seqproc_events_dead_lettered_total{partition,type}``: events (or undecodable messages, ``type="message"``) put
  in the dead-letter store, including the later events of a parked key
- ``seqproc_events_lost_total{partition}``: direct-publish events that never arrived (their producer's sequence
  has a gap that outlived ``SEQPROC_LOSS_GRACE_S``: a broker failover dropped pushes it had acknowledged); counted by
  the worker that declares the gap, logged with the producer
- ``seqproc_apply_latency_seconds``: from the start of a flush to its commit (one transaction, every partition it
  carried)
- ``seqproc_batch_size_events{}``: events per partition per transaction

Read from Redis at each scrape, for the partitions this worker owns now:

- ``seqproc_queue_depth{partition}``: messages waiting in the partition queue
- ``seqproc_oldest_event_age_seconds{partition}``: now minus the producer's stamp of the oldest waiting event (0 when
  the queue is empty)
- ``seqproc_partition_epoch{partition}``: the fencing epoch this worker holds

Served by ``seqproc relay`` (``SEQPROC_METRICS_PORT``), read from the outbox at each scrape:

- ``seqproc_outbox_depth``: events committed to the outbox and not applied yet
- ``seqproc_outbox_unsent``: ... of which not sent to the broker yet
- ``seqproc_outbox_oldest_event_age_seconds``: age of the oldest (0 when empty)

Alert on ``seqproc_oldest_event_age_seconds`` (lag: how late a write is applied) and on
``increase(seqproc_events_dead_lettered_total[10m]) > 0`` (an event needs a human: ``seqproc deadletter``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from seqproc.models.events import Event
from seqproc.models.outcomes import DEAD_LETTER_REASONS, Outcome
from seqproc.worker.hooks import Committed, Hooks, Settled
from seqproc.worker.ops.lag import QueueProbe, probe_queues

logger = logging.getLogger(__name__)

#: Our own registry (not the global one): what a worker serves is exactly what this module defines, plus the
#: process collector (memory, CPU, open files).
REGISTRY = CollectorRegistry(auto_describe=True)

APPLIED = Counter(
    "seqproc_events_applied", "Events applied, by partition and event type", ["partition", "type"], registry=REGISTRY
)
DUPLICATE = Counter(
    "seqproc_events_duplicate",
    "Events whose idempotency key was already applied (no effect), by partition and event type",
    ["partition", "type"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "seqproc_events_rejected",
    "Events refused by a rule, by partition, event type and reason",
    ["partition", "type", "reason"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "seqproc_events_dead_lettered",
    "Events and messages put in the dead-letter store, by partition and event type",
    ["partition", "type"],
    registry=REGISTRY,
)
LOST = Counter(
    "seqproc_events_lost",
    "Direct-publish events that never arrived (a gap in their producer's sequence, past SEQPROC_LOSS_GRACE_S)",
    ["partition"],
    registry=REGISTRY,
)
APPLY_LATENCY = Histogram(
    "seqproc_apply_latency_seconds",
    "Seconds from the start of a flush to its commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "seqproc_batch_size_events",
    "Events per partition per transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000),
    registry=REGISTRY,
)


def count_outcomes(partition: int, events: Sequence[Event], outcomes: Sequence[Outcome]) -> None:
    """Count one committed batch of one partition (tallied first: one increment per label set, not per event)."""
    tally: Tally[tuple[str, str, str]] = Tally()
    for event, outcome in zip(events, outcomes, strict=True):
        tally[(event.type, outcome.status, outcome.reason or "")] += 1
    label = str(partition)
    for (kind, status, reason), n in tally.items():
        if status == "applied":
            APPLIED.labels(label, kind).inc(n)
        elif status == "duplicate":
            DUPLICATE.labels(label, kind).inc(n)
        elif reason in DEAD_LETTER_REASONS:
            DEAD_LETTERED.labels(label, kind).inc(n)
        else:
            REJECTED.labels(label, kind, reason or "unknown").inc(n)


def count_dead_letters(records: Iterable[Any]) -> None:
    """Count stored dead letters that are not events' outcomes: messages that could not be decoded or routed."""
    for record in records:
        partition = "none" if record.partition is None else str(record.partition)
        DEAD_LETTERED.labels(partition, "message").inc()


def count_lost(gaps: Iterable[Any]) -> None:
    """Count the events of gaps just declared lost (by this worker: each gap is declared once, by one worker).
    Rare, so counted whether or not this worker serves the metrics."""
    for gap in gaps:
        LOST.labels(str(gap.partition)).inc(gap.count)


def observe_flush(seconds: float, batch_sizes: Iterable[int]) -> None:
    APPLY_LATENCY.observe(seconds)
    for size in batch_sizes:
        BATCH_SIZE.observe(size)


# -- the lifecycle hooks (worker.hooks) this module subscribes to: only in a worker that serves the metrics ------
def after_commit(committed: Committed) -> None:
    observe_flush(committed.elapsed_s, [len(batch.events) for batch, _ in committed.batches])


def after_settle(settled: Settled) -> None:
    count_outcomes(settled.partition, settled.events, settled.outcomes)


def on_dead_letter(records: Sequence[Any]) -> None:
    count_dead_letters(records)


class QueueCollector(Collector):
    """Queue depth, oldest waiting event's age and epoch of the partitions the worker owns, read at scrape time
    (one Redis pipeline)."""

    def __init__(self, redis_client: Any, owned: Callable[[], dict[int, int]]) -> None:
        self.redis = redis_client
        self.owned = owned

    def collect(self) -> Iterable[GaugeMetricFamily]:
        epochs = dict(self.owned())
        depth = GaugeMetricFamily(
            "seqproc_queue_depth", "Messages waiting in the partition queue", labels=["partition"]
        )
        age = GaugeMetricFamily(
            "seqproc_oldest_event_age_seconds",
            "Age of the oldest waiting event of the partition (0: none waiting)",
            labels=["partition"],
        )
        epoch = GaugeMetricFamily(
            "seqproc_partition_epoch", "Fencing epoch this worker holds for the partition", labels=["partition"]
        )
        partitions = sorted(epochs)
        if partitions:
            try:
                probes: list[QueueProbe] | None = probe_queues(self.redis, partitions)
            except Exception:
                logger.warning("metrics: could not read the queues", exc_info=True)
                probes = None
            now = time.time()
            for p in partitions:
                epoch.add_metric([str(p)], epochs[p])
            for probe in probes or []:
                depth.add_metric([str(probe.partition)], probe.depth)
                age.add_metric([str(probe.partition)], max(0.0, probe.oldest_age_s(now) or 0.0))
        yield depth
        yield age
        yield epoch


class OutboxCollector(Collector):
    """The outbox's depth, events not sent yet, and oldest event's age, read at scrape time (one query)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from seqproc.worker.ops.lag import outbox_depth

        depth = GaugeMetricFamily("seqproc_outbox_depth", "Events in the outbox: committed, not applied yet")
        unsent = GaugeMetricFamily("seqproc_outbox_unsent", "Events in the outbox not sent to the broker yet")
        age = GaugeMetricFamily(
            "seqproc_outbox_oldest_event_age_seconds", "Age of the oldest event in the outbox (0: empty)"
        )
        try:
            outbox = outbox_depth(self.engine)
        except Exception:
            logger.warning("metrics: could not read the outbox", exc_info=True)
        else:
            depth.add_metric([], outbox["depth"])
            unsent.add_metric([], outbox["unsent"])
            age.add_metric([], outbox["oldest_age_s"] or 0.0)
        yield depth
        yield unsent
        yield age


def serve_relay(port: int, outbox_engine: Any, *, address: str = "127.0.0.1") -> None:
    """The relay's endpoint: the outbox gauges and the process collector."""
    from prometheus_client import ProcessCollector

    ProcessCollector(registry=REGISTRY)
    REGISTRY.register(OutboxCollector(outbox_engine))
    start_http_server(port, addr=address, registry=REGISTRY)
    logger.info("metrics: serving the relay's Prometheus metrics on %s:%d/metrics", address, port)


def serve(
    port: int, redis_client: Any, owned: Callable[[], dict[int, int]], hooks: Hooks, *, address: str = "127.0.0.1"
) -> None:
    """Start the HTTP endpoint (``/metrics``) in a daemon thread of this process, and count what ``hooks`` (the
    worker's) report from now on."""
    import sys

    from prometheus_client import ProcessCollector

    ProcessCollector(registry=REGISTRY)
    REGISTRY.register(QueueCollector(redis_client, owned))
    start_http_server(port, addr=address, registry=REGISTRY)
    hooks.subscribe(sys.modules[__name__])
    logger.info("metrics: serving Prometheus metrics on %s:%d/metrics", address, port)
