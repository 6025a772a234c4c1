"""What a running worker process holds: its settings, database engine, outcome store and partition epochs.

Installed once by ``seqproc worker`` (or the embedded mode) before Celery starts consuming; read by the batcher.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from models.outcomes import OutcomeStore, outcome_store
from models.settings import Settings


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


_current: Runtime | None = None


def install(settings: Settings, engine: Engine, epochs: dict[int, int], *, owner: str | None = None) -> Runtime:
    global _current
    runtime = Runtime(settings, engine, outcome_store(settings.result_backend, ttl_s=settings.outcome_ttl_s), epochs)
    if owner:
        runtime.owner = owner
    _current = runtime
    return runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("no seqproc runtime installed: start workers with `seqproc worker`")
    return _current
