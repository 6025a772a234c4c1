"""Starting a worker: claim the partitions, hand back a dead owner's unacked messages, run Celery's worker.

``run_worker`` is what ``seqproc worker`` runs (a process of its own); ``embedded_worker`` runs one in a thread of
the current process on Celery's memory transport (the demo's fallback and the unit tests).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.signals import worker_ready
from sqlalchemy import inspect

from models.db import make_engine
from models.errors import ConfigError
from models.settings import Settings, mask_url
from worker import runtime
from worker.partitions import claim, queues_for, restore_unacked

logger = logging.getLogger(__name__)


def prepare(settings: Settings, partitions: Sequence[int], *, owner: str) -> runtime.Runtime:
    """Engine, schema check, claim: everything a worker needs before it consumes."""
    engine = make_engine(settings.database_url, statement_timeout_s=settings.apply_time_limit_s, pool_size=2)
    if not inspect(engine).has_table("idempotency_ledger"):
        raise ConfigError(
            f"the database at {mask_url(settings.database_url)} has no seqproc tables: run `seqproc migrate` first"
        )
    epochs = claim(engine, partitions, owner=owner, total=settings.partitions)
    return runtime.install(settings, engine, epochs, owner=owner)


def run_worker(
    settings: Settings,
    partitions: Sequence[int],
    *,
    hostname: str | None,
    loglevel: str,
    ready_file: str | None = None,
) -> int:
    """Run a Celery worker consuming exactly ``partitions``; returns its exit code."""
    if settings.embedded:
        raise ConfigError(
            "SEQPROC_BROKER_URL is memory://: that broker lives inside one process, so workers run in-process "
            "only (`seqproc demo`); point it at Redis to run `seqproc worker`"
        )
    from worker.app import configure

    span = _span(partitions)
    node = hostname or f"seqproc-p{span}@{socket.gethostname()}"
    rt = prepare(settings, partitions, owner=f"{node}/{os.getpid()}")
    app = configure(settings)

    queues = queues_for(partitions)
    with app.connection_for_write() as conn:
        restore_unacked(conn.default_channel, queues)
    logger.info("worker %s: partitions %s, epochs %s", node, span, rt.epochs)
    if ready_file:
        _announce_ready(ready_file)
    celery_worker = app.Worker(
        hostname=node,
        queues=queues,
        pool_cls="solo",
        concurrency=1,
        loglevel=loglevel,
        without_mingle=True,
        without_gossip=True,
        send_events=settings.task_events,
        quiet=True,
    )
    try:
        celery_worker.start()
    finally:
        if ready_file:
            Path(ready_file).unlink(missing_ok=True)
    return int(celery_worker.exitcode or 0)


def _announce_ready(path: str) -> None:
    """Write ``path`` (this process's pid) once the worker consumes: for supervisors, the demo and the benchmark."""

    def write(**_: Any) -> None:
        Path(path).write_text(f"{os.getpid()}\n")

    worker_ready.connect(write, weak=False)


@contextmanager
def embedded_worker(settings: Settings, partitions: Sequence[int] | None = None) -> Iterator[Any]:
    """A worker in a thread of this process (memory transport, usually SQLite): yields the Celery app."""
    from celery.contrib.testing.worker import start_worker

    from worker.app import configure

    chosen = list(range(settings.partitions)) if partitions is None else list(partitions)
    prepare(settings, chosen, owner=f"embedded/{os.getpid()}/{threading.get_ident()}")
    app = configure(settings)
    import worker.tasks  # noqa: F401

    with start_worker(
        app,
        pool="solo",
        concurrency=1,
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
