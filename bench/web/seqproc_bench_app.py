"""What the two applications of ``seqproc bench --server`` share: the atomic update's statements, how a request names
its like, the databases' addresses, and the per-process counters of accepted requests that the benchmark reads.

The servers import the applications from this folder by their own names (``seqproc_bench_*``: gunicorn's
``--pythonpath``, uvicorn's ``--app-dir``), so these modules import nothing from ``bench/``.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from urllib.parse import parse_qsl

from seqproc.models.settings import Settings

#: The folder where each server process keeps its counters (set by the benchmark).
COUNTS_DIR_ENV = "SEQPROC_BENCH_COUNTS_DIR"
#: A process's counters: accepted requests, and the messages and events its seqproc calls sent so far.
COUNTS_FORMAT = "<3q"
COUNTS_SUFFIX = ".count"

#: The atomic update, as ``bench/direct.py`` runs it from its producer threads: the like, then the count.
ATOMIC_INSERT = "INSERT INTO bench_like (article_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
ATOMIC_INCREMENT = "UPDATE bench_like_count SET like_count = like_count + 1 WHERE article_id = %s"


def like_of(query_string: str) -> tuple[int, int]:
    """``article=1&user=7`` -> (1, 7); KeyError or ValueError naming what is wrong otherwise."""
    params = dict(parse_qsl(query_string))
    return int(params["article"]), int(params["user"])


def libpq_urls(settings: Settings) -> tuple[str, str]:
    """seqproc's database (the atomic update's tables live there too) and the outbox's, as psycopg takes them."""
    return _libpq(settings.database_url), _libpq(settings.outbox_url)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class Counters:
    """This process's accepted requests, in a small file of its own that the benchmark sums once the server has
    stopped: a shared mapping, so a request pays a store, not a system call, and a killed process keeps its count.
    The file appears (complete, by a rename) once the process is connected: the benchmark waits for all of them."""

    def __init__(self, directory: str) -> None:
        path = Path(directory) / f"{os.getpid()}{COUNTS_SUFFIX}"
        partial = path.with_suffix(".partial")
        partial.write_bytes(bytes(struct.calcsize(COUNTS_FORMAT)))
        with partial.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
        partial.replace(path)
        self.accepted = 0

    def accept(self, *, messages: int = 0, events: int = 0) -> None:
        """One more request done (its effect committed or its event sent); the process's send totals so far."""
        self.accepted += 1
        struct.pack_into(COUNTS_FORMAT, self._map, 0, self.accepted, messages, events)


def read_counts(directory: Path) -> tuple[int, int, int]:
    """The sums over every process's counters: accepted requests, messages and events sent."""
    totals = [0, 0, 0]
    for path in directory.glob(f"*{COUNTS_SUFFIX}"):
        for n, value in enumerate(struct.unpack(COUNTS_FORMAT, path.read_bytes())):
            totals[n] += value
    return totals[0], totals[1], totals[2]


def ready_processes(directory: Path) -> int:
    """How many server processes are connected (their counters exist)."""
    return sum(1 for _ in directory.glob(f"*{COUNTS_SUFFIX}"))
