"""Starting a worker: claim the partitions, hand back a dead owner's unacked messages, run Celery's worker.

``run_worker`` is what ``seqproc worker`` runs (a process of its own); ``embedded_worker`` runs one in a thread of
the current process on Celery's memory transport (the demo's fallback and the unit tests).
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.signals import worker_ready
from celery.utils.nodenames import host_format
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import Engine, inspect

from seqproc.migrations import behind
from seqproc.models.clients import broker_client
from seqproc.models.db import ledger_engine, make_engine
from seqproc.models.domain import load_domains
from seqproc.models.errors import ConfigError, ServiceUnavailable, first_line
from seqproc.models.settings import Settings, mask_url
from seqproc.models.wire import IDLE_QUEUE, JOBS_QUEUE, is_redis_url, partition_of_queue
from seqproc.worker import runtime
from seqproc.worker.hooks import user_subscribers
from seqproc.worker.ownership.liveness import beat, forget_gone, release
from seqproc.worker.ownership.partitions import (
    check_partition_count,
    claim,
    publish_partition_count,
    queues_for,
    restore_unacked,
    session_name,
)
from seqproc.worker.ownership.static import StaticOwnership, fence
from seqproc.worker.preflight import preflight

logger = logging.getLogger(__name__)


def prepare(settings: Settings, partitions: Sequence[int], *, owner: str, spec: str | None = None) -> runtime.Runtime:
    """Engine, schema check, claim: everything a worker needs before it consumes. ``spec`` (``--partitions`` as
    given; None for the embedded worker): the worker heartbeats (``seqproc_worker``) from before its claim."""
    engine = make_engine(
        settings.database_url,
        statement_timeout_s=settings.apply_time_limit_s,
        # A worker never idles inside its transactions: one that does is paused or hung, holding the locks a
        # takeover needs. Ending its session lets the new owner claim the partition; the old one is then fenced.
        idle_in_transaction_timeout_s=min(settings.apply_time_limit_s, settings.lease_s),
        pool_size=2,
        application_name=session_name(owner),
        # No test round trip per transaction: a connection found dead mid-transaction (a server restart, a session
        # ended) is a transient error, and the transaction is retried in place on a new one (consume/retry.py).
        pre_ping=False,
        # ... and one that stopped answering (half-open) is found dead by its reply deadline.
        socket_timeout_s=settings.database_socket_timeout_s,
    )
    lag = behind(engine)
    if lag is not None:
        current, head = lag
        raise ConfigError(
            f"the database at {mask_url(settings.database_url)} has no seqproc tables: run `seqproc migrate` first"
            if current is None
            else f"the database at {mask_url(settings.database_url)} is at schema revision {current}, this seqproc "
            f"needs {head}: run `seqproc migrate` first"
        )
    # Before the claim: a worker that cannot import its domains (a ConfigError naming the module) must not take
    # partitions over from one that can, and then exit, leaving them without a consumer.
    load_domains(settings.domains)
    user_subscribers(settings.hooks)  # ... nor its hooks (SEQPROC_HOOKS)
    if spec is not None:
        # Alive before it owns anything: a worker waiting for these partitions must not take them back from this one
        # as from a dead one.
        with engine.begin() as conn:
            forget_gone(conn)
            beat(conn, owner, partitions=spec, liveness_s=settings.lease_s)
    try:
        epochs = claim(engine, partitions, owner=owner, total=settings.partitions)
    except BaseException:
        if spec is not None:
            _release(engine, owner)
        raise
    return runtime.build(settings, engine, epochs, owner=owner)


def run_worker(
    settings: Settings,
    partitions: Sequence[int] | None,
    *,
    hostname: str | None,
    loglevel: str,
    ready_file: str | None = None,
) -> int:
    """Run a Celery worker consuming exactly ``partitions`` (None: share them through leases); its exit code.

    It claims nothing before its broker, database and result backend answer (:func:`preflight`). A fixed set of
    partitions heartbeats, and resumes a partition another worker took once that one is gone
    (``worker.ownership.static``). Whatever ends it, its partitions are marked released on the way out.

    The apply task and the consumer steps (worker.tasks) load with the app: it lists them in ``include``.
    """
    if settings.embedded:
        raise ConfigError(
            "SEQPROC_BROKER_URL is memory://: that broker lives inside one process, so workers run in-process "
            "only (`seqproc demo`); point it at Redis to run `seqproc worker`"
        )
    if partitions is None and not is_redis_url(settings.broker_url):
        raise ConfigError(
            "--partitions auto keeps its leases in Redis: SEQPROC_BROKER_URL must be redis:// or rediss://"
        )
    preflight(settings)
    span = "auto" if partitions is None else _span(partitions)
    # Unique per process by default (Flower and `celery inspect` tell workers apart by node name): the pid.
    node = host_format(hostname) if hostname else f"seqproc-p{span}-{os.getpid()}@{socket.gethostname()}"
    # node/pid/run: the run token makes the owner unique even when a restarted container reuses the host name and
    # pid 1, so a new process never mistakes its predecessor's leases for its own.
    owner = f"{node}/{os.getpid()}/{secrets.token_hex(4)}"
    chosen: list[int] = [] if partitions is None else list(partitions)
    rt = prepare(settings, chosen, owner=owner, spec=span)
    try:
        return _consume(settings, rt, node, chosen, auto=partitions is None, loglevel=loglevel, ready_file=ready_file)
    finally:
        if ready_file:
            Path(ready_file).unlink(missing_ok=True)
        # A broker gone silent is not asked again on the way out (a socket timeout for nothing): the leases expire
        # within SEQPROC_LEASE_S, and the next claim of the partitions overwrites the fences.
        broker_answers = rt.broker_watch.silent is None
        if rt.leases is not None and broker_answers:
            rt.leases.release_all()  # hand the partitions back at once instead of after the lease time
        _release(rt.engine, owner)
        if rt.static is not None and broker_answers:
            rt.static.release_fences()  # after the release: a dead broker must not hold the hand-back up


def _consume(
    settings: Settings,
    rt: runtime.Runtime,
    node: str,
    chosen: list[int],
    *,
    auto: bool,
    loglevel: str,
    ready_file: str | None,
) -> int:
    """:func:`run_worker` once its partitions are claimed: run Celery's worker until it stops; its exit code."""
    from seqproc.worker.app import configure

    app = configure(settings)
    runtime.attach(app, rt)
    # The fetch script takes messages only from queues whose fence (an auto worker's lease, a fixed worker's claim)
    # holds this worker's token, atomically with the take: a worker taken over fetches nothing more from them.
    # Every channel of the process shares the runtime's broker watch: a broker gone silent fails them all at once.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "fetch_owner": rt.owner,
        "broker_watch": rt.broker_watch,
    }
    if auto:
        from seqproc.worker.ownership.leases import LeaseManager

        rt.leases = LeaseManager(settings, rt.engine, rt.owner)
        # Skip queues we cannot prove ours before asking Redis at all.
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "fetch_filter": _LeaseFilter(rt)}
        while rt.leases.tick(on_acquire=rt.epochs.__setitem__):  # the first share, claimed before consuming
            pass
        chosen = rt.leases.owned
    else:
        rt.static = StaticOwnership(settings, rt.engine, rt.owner, chosen, rt.epochs, spec=_span(chosen))
    queues = queues_for(chosen) or [IDLE_QUEUE]
    try:
        if is_redis_url(settings.broker_url):  # where producers read the deployment's partition count
            with broker_client(settings) as broker:
                publish_partition_count(rt.engine, settings.partitions, client=broker)
        with app.connection_for_write() as conn:
            if rt.static is not None:
                # Claimed (epochs raised), then fenced, then the unacked messages back, then consume: the order
                # that keeps the worker taken over from fetching anything it would give back behind later events.
                fence(conn.default_channel, rt.epochs, rt.owner)
            restore_unacked(conn.default_channel, queues)
    except (KombuOperationalError, RedisError, OSError) as error:
        # Lost since the preflight: the caller marks the partitions released on the way out.
        url = mask_url(settings.broker_url)
        raise ServiceUnavailable(
            f"SEQPROC_BROKER_URL: cannot reach {url} ({first_line(error, limit=300)}); the partitions claimed are "
            "released",
            setting="SEQPROC_BROKER_URL",
            url=url,
        ) from error
    if settings.metrics_port:
        start_metrics(settings, rt)
    logger.info("worker %s: partitions %s, epochs %s", node, _span(chosen) if chosen else "none yet", rt.epochs)
    if ready_file:
        _announce_ready(ready_file)
    celery_worker = _celery_worker(app, settings, hostname=node, queues=queues, loglevel=loglevel)
    if rt.static is not None:
        rt.static.heartbeat()  # fresh as the consumer starts: Celery's start must not pass for a dead worker
    settle_heap()
    celery_worker.start()
    return int(celery_worker.exitcode or 0)


def _celery_worker(app: Any, settings: Settings, **options: Any) -> Any:
    """Celery's worker as seqproc runs it: one solo process with seqproc's consumer (dead letters instead of drops)."""
    from seqproc.worker.consume.steps import SeqprocConsumer

    return app.Worker(
        pool_cls="solo",
        concurrency=1,
        consumer_cls=SeqprocConsumer,
        without_mingle=True,
        without_gossip=True,
        send_events=settings.task_events,
        quiet=True,
        **options,
    )


#: The young generation's collection threshold while consuming (CPython's default: 700 allocations). A flush allocates
#: tens of thousands of short-lived objects (decoded events, SQL parameters, outcomes), nearly all freed by reference
#: counting; at 700 the collector would run dozens of times per batch and walk them for nothing.
YOUNG_GC_THRESHOLD = 20_000


def settle_heap() -> None:
    """Before consuming: move everything imported and configured so far into the permanent generation (``gc.freeze``:
    Celery, kombu, SQLAlchemy and pydantic leave ~hundreds of thousands of long-lived objects that every full
    collection would walk again), and raise the young generation's threshold (:data:`YOUNG_GC_THRESHOLD`). Cycles are
    still collected, only less often; memory stays flat (``seqproc bench --soak-s`` checks it)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


def _release(engine: Engine, owner: str) -> None:
    """Mark ``owner``'s partitions released (the workers configured for them resume them at once) and end its
    heartbeat. A database that cannot be reached now: its heartbeat runs out instead, after SEQPROC_LEASE_S."""
    try:
        release(engine, owner)
    except Exception as error:
        logger.warning(
            "could not mark the partitions of %s released (%s); they count as free once its heartbeat runs out "
            "(SEQPROC_LEASE_S)",
            owner,
            first_line(error),
        )


def run_beat(settings: Settings, *, loglevel: str, hostname: str | None = None) -> int:
    """Run celery beat with seqproc's schedule, and a worker for the scheduled jobs in the same process.

    Several beats may run at once (one per host, for availability): each job is a singleton (a lock, and a database
    row per scheduled slot), so a job runs once per slot whichever beat fires it, and never overlaps itself.
    """
    if settings.embedded:
        raise ConfigError("SEQPROC_BROKER_URL is memory://: seqproc beat needs a broker shared with the workers")
    from seqproc.worker.app import configure
    from seqproc.worker.beat.jobs import JOBS
    from seqproc.worker.beat.schedule import register_jobs

    engine = make_engine(
        settings.database_url,
        statement_timeout_s=settings.apply_time_limit_s,
        pool_size=2,
        socket_timeout_s=settings.database_socket_timeout_s,
    )
    if not inspect(engine).has_table("job_run"):
        raise ConfigError(
            f"the database at {mask_url(settings.database_url)} has no seqproc tables: run `seqproc migrate` first"
        )
    node = host_format(hostname) if hostname else f"seqproc-beat@{socket.gethostname()}"
    app = configure(settings)
    # The beat's own worker dead-letters like any worker: it needs the runtime (no partitions).
    beat_runtime = runtime.build(settings, engine, {}, owner=f"{node}/{os.getpid()}")
    beat_runtime.role = "beat"
    runtime.attach(app, beat_runtime)
    register_jobs(app, JOBS, settings)
    with tempfile.TemporaryDirectory(prefix="seqproc-beat-") as directory:
        celery_worker = _celery_worker(
            app,
            settings,
            hostname=node,
            queues=[JOBS_QUEUE],
            loglevel=loglevel,
            beat=True,
            # Each beat its own schedule file: several beats never share (or lock) one.
            schedule_filename=str(Path(directory) / "schedule"),
        )
        celery_worker.start()
    return int(celery_worker.exitcode or 0)


def run_relay(settings: Settings, *, once: bool = False, ready_file: str | None = None) -> int:
    """Run the outbox relay until SIGTERM or SIGINT (a pass in progress finishes first); its exit code."""
    if not is_redis_url(settings.broker_url):
        raise ConfigError("seqproc relay pushes onto Redis lists: SEQPROC_BROKER_URL must be redis:// or rediss://")
    outbox = make_engine(
        settings.outbox_url,
        statement_timeout_s=settings.apply_time_limit_s,
        # A pass holds its partitions' advisory locks for one short transaction (its pushes included): a relay that
        # idles inside one is paused or hung, and would keep every partition from the other relays. PostgreSQL
        # ends its session, which frees the locks; its pushes without a commit are sent again (duplicates).
        idle_in_transaction_timeout_s=min(settings.apply_time_limit_s, settings.lease_s),
        pool_size=2,
        # A pass waiting on a connection that stopped answering gives up and is tried again on a new one.
        socket_timeout_s=settings.database_socket_timeout_s,
    )
    try:
        with ledger_engine(settings, outbox) as ledger:
            return _relay(settings, outbox, ledger, once=once, ready_file=ready_file)
    finally:
        outbox.dispose()


def _relay(settings: Settings, outbox: Engine, ledger: Engine, *, once: bool, ready_file: str | None) -> int:
    """:func:`run_relay` on its engines (``run_relay`` disposes them)."""
    import signal

    from seqproc.worker.relay import Relay

    if not inspect(outbox).has_table("seqproc_outbox"):
        raise ConfigError(f"{mask_url(settings.outbox_url)} has no outbox table: run `seqproc migrate` first")
    # As a worker does: a relay with another SEQPROC_PARTITIONS would send to other partitions than the workers
    # read (or never send rows of partitions it does not know).
    check_partition_count(ledger, settings.partitions)
    relay = Relay(settings, outbox, ledger, broker_client(settings))
    if once:
        result = relay.tick()
        logger.info(
            "relay: sent %d event(s) in %d message(s), forgot %d", result.sent, result.messages, result.forgotten
        )
        return 0
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("relay: %s received, stopping after this pass", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.metrics_port:
        from seqproc.worker.ops import metrics

        _serve_metrics(
            settings, lambda: metrics.serve_relay(settings.metrics_port, outbox, address=settings.metrics_address)
        )
    logger.info(
        "relay: outbox %s -> broker %s, %d partitions",
        mask_url(settings.outbox_url),
        mask_url(settings.broker_url),
        settings.partitions,
    )
    if ready_file:
        Path(ready_file).write_text(f"{os.getpid()}\n")
    try:
        relay.run(stop)
    finally:
        if ready_file:
            Path(ready_file).unlink(missing_ok=True)
    return 0


def start_metrics(settings: Settings, rt: runtime.Runtime) -> None:
    """Serve the worker's Prometheus metrics (``SEQPROC_METRICS_PORT``); the gauges follow the partitions it owns."""
    from seqproc.worker.ops import metrics

    client = broker_client(settings, timeout_s=2, connect_timeout_s=2)
    _serve_metrics(
        settings,
        lambda: metrics.serve(
            settings.metrics_port, client, lambda: dict(rt.epochs), rt.hooks, address=settings.metrics_address
        ),
    )


def _serve_metrics(settings: Settings, serve: Callable[[], None]) -> None:
    try:
        serve()
    except OSError as error:
        raise ConfigError(
            f"SEQPROC_METRICS_PORT: cannot serve metrics on {settings.metrics_address}:{settings.metrics_port} "
            f"({error.strerror or error}); give each process on a host its own port"
        ) from error


@dataclass(frozen=True)
class _LeaseFilter:
    """An auto worker's fetch filter (transport option ``fetch_filter``): the queues whose lease is ours and fresh."""

    rt: runtime.Runtime

    def __call__(self, queue: str) -> bool:
        partition = partition_of_queue(queue)
        rt = self.rt
        return partition is not None and partition in rt.epochs and rt.leases is not None and rt.leases.fresh(partition)

    def __json__(self) -> str:
        """What ``celery inspect stats`` shows of it (the transport options are in a worker's stats)."""
        return "the queues whose lease this worker holds, fresh"


def _announce_ready(path: str) -> None:
    """Write ``path`` (this process's pid) once the worker consumes: for supervisors, the demo and the benchmark."""

    def write(**_: Any) -> None:
        Path(path).write_text(f"{os.getpid()}\n")

    worker_ready.connect(write, weak=False)


@contextmanager
def embedded_worker(settings: Settings, partitions: Sequence[int] | None = None) -> Iterator[Any]:
    """A worker in a thread of this process (memory transport, usually SQLite): yields the Celery app."""
    from celery.contrib.testing.worker import start_worker

    from seqproc.worker.app import configure

    chosen = list(range(settings.partitions)) if partitions is None else list(partitions)
    rt = prepare(settings, chosen, owner=f"embedded/{os.getpid()}/{threading.get_ident()}")
    app = configure(settings)
    runtime.attach(app, rt)

    from seqproc.worker.consume.steps import SeqprocConsumer

    with start_worker(
        app,
        pool="solo",
        concurrency=1,
        consumer_cls=SeqprocConsumer,
        perform_ping_check=False,
        queues=queues_for(chosen),
        loglevel="WARNING",
        shutdown_timeout=30,
    ):
        yield app


def _span(partitions: Sequence[int]) -> str:
    if not partitions:
        return "none"
    ranges = []
    start = prev = partitions[0]
    for p in [*partitions[1:], None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        ranges.append(f"{start}-{prev}" if start != prev else f"{start}")
        if p is not None:
            start = prev = p
    return ",".join(ranges)
