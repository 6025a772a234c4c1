"""What a running worker process holds: its settings, database engine, outcome store and partition epochs.

Built once by ``seqproc worker`` (or the embedded mode, or ``seqproc beat``) before Celery starts consuming, and
handed to its owner, the apply task (:func:`attach`), which builds its batcher around it. The consumer steps and the
scheduled jobs reach it through their app's apply task (:func:`of`); nothing finds it through a module global.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import Engine

from seqproc.models.broker_watch import BrokerWatch
from seqproc.models.domain import load_domains
from seqproc.models.outcomes import OutcomeStore, outcome_store
from seqproc.models.settings import Settings
from seqproc.models.wire import APPLY_TASK
from seqproc.worker.hooks import Hooks


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    outcomes: OutcomeStore
    #: partition -> the fencing epoch this process holds for it.
    epochs: dict[int, int] = field(default_factory=dict)
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}/{os.getpid()}")
    #: ``--partitions auto``: the leases this worker holds (None: a fixed set of partitions).
    leases: Any = None
    #: ``seqproc worker`` with a fixed set: its heartbeat, and the partitions it resumes when their taker is gone
    #: (``worker.ownership.static.StaticOwnership``; None in the embedded mode and the beat).
    static: Any = None
    #: ``worker`` (consumes partition queues) or ``beat`` (the scheduled jobs' own worker).
    role: str = "worker"
    #: The lifecycle hooks' subscribers (``worker.hooks``): the built-in ones are subscribed by :func:`attach`.
    hooks: Hooks = field(default_factory=Hooks)
    subscribed: bool = False
    #: Called when the consumer stops, after the batch in hand is applied: what a subscriber gathers goes out.
    on_stop: list[Callable[[], object]] = field(default_factory=list)
    #: Whether the broker went silent: shared by every channel of the process (transport option ``broker_watch``),
    #: read by the partition ownership's tick, cleared when the consumer has reconnected.
    broker_watch: BrokerWatch = field(default_factory=BrokerWatch)


def build(settings: Settings, engine: Engine, epochs: dict[int, int], *, owner: str | None = None) -> Runtime:
    load_domains(settings.domains)  # every event type the producers may send, before the first message
    runtime = Runtime(
        settings,
        engine,
        outcome_store(settings.result_backend, ttl_s=settings.outcome_ttl_s, sentinel_master=settings.sentinel_master),
        epochs,
    )
    if owner:
        runtime.owner = owner
    return runtime


def attach(app: Celery, runtime: Runtime) -> None:
    """Give ``runtime`` to ``app``'s apply task (which builds its batcher around it), and subscribe the built-in
    hooks and ``SEQPROC_HOOKS``' to its lifecycle (once per runtime)."""
    import seqproc.worker.tasks  # noqa: F401  # registers the apply task on the app (it imports this module)
    from seqproc.worker.consume.subscribers import subscribe_all

    task = app.tasks[APPLY_TASK]
    task.attach(runtime)  # type: ignore[attr-defined]  # ApplyTask.attach
    if not runtime.subscribed:
        runtime.subscribed = True
        subscribe_all(runtime, task.batcher)  # type: ignore[attr-defined]  # ApplyTask.batcher


def of(app: Celery) -> Runtime:
    """The runtime attached to ``app``'s apply task."""
    runtime: Runtime | None = getattr(app.tasks[APPLY_TASK], "runtime", None)
    if runtime is None:
        raise RuntimeError("no seqproc runtime attached: start workers with `seqproc worker`")
    return runtime
