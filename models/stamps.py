"""Ordering stamps: a hybrid clock, so that "the last action wins" follows the order the producer issued events.

A stamp is the wall clock in nanoseconds with its low 10 bits replaced by a node number, kept strictly
increasing within a process (``max(now, last + 1024)``). So:
- within one process, every stamp is larger than the one before, whatever the clock does;
- across processes and hosts, stamps compare by wall clock: two actions of one user on one article issued from
  different hosts are ordered correctly when they are further apart than the hosts' clock skew (NTP keeps that to a
  few milliseconds); closer than that, one of them wins deterministically (the larger stamp), and the README says so;
- two distinct events never share a stamp unless two processes drew the same node number and the same microsecond.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import threading
import time

NODE_BITS = 10
_NODE_MASK = (1 << NODE_BITS) - 1
_STEP = 1 << NODE_BITS


class StampClock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._node = secrets.randbelow(_STEP)
        self._last = 0

    def next(self) -> int:
        if self._pid != os.getpid():  # forked without Python's hooks (uWSGI does, unless py-call-osafterfork)
            self._reset()
        now = (time.time_ns() & ~_NODE_MASK) | self._node
        with self._lock:
            if now <= self._last:
                now = self._last + _STEP
            self._last = now
            return now


#: A forked child must not reuse its parent's node number (the two would issue equal stamps): it draws its own at its
#: first stamp, seen by its pid (a fork hook would miss uWSGI's workers, forked without Python's hooks).
_CLOCK = StampClock()


def next_stamp() -> int:
    """The next ordering stamp of this process."""
    return _CLOCK.next()


#: CPython built without the GIL (3.13t and later): C calls are no longer atomic between threads by default.
_FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()


class _IdSource:
    """Unique ids without a system call per id: 96 random bits per process (16 URL-safe base64 characters), then a
    counter in hex: 17-32 characters, about 20 in practice.

    A fresh ``uuid4()`` per event read ``os.urandom`` twice per call; this does it once per process (and again in
    a forked child, which must not repeat its parent's ids). ``next()`` of an ``itertools.count`` is one C call under
    the GIL, so threads never draw the same number without a lock; a free-threaded build (no GIL) takes one.
    Short ids keep messages, the ``unacked`` copies in Redis and the ledger's key index small: an event carries its
    id twice (as its key too, when the caller gives none).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._prefix = secrets.token_urlsafe(12)  # fixed length: prefix + counter is never ambiguous
        self._counter = itertools.count(1)

    def next(self) -> str:
        if self._pid != os.getpid():  # forked without Python's hooks (uWSGI does, unless py-call-osafterfork)
            self._reset()
        if _FREE_THREADED:
            with self._lock:
                return f"{self._prefix}{next(self._counter):x}"
        return f"{self._prefix}{next(self._counter):x}"


#: Re-drawn in a forked child at its first id, as the stamp clock's node is.
_IDS = _IdSource()


def unique_id() -> str:
    """An id no other call, process or host will produce (96 random bits + a per-process counter)."""
    return _IDS.next()
