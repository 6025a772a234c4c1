"""Ordering stamps: strictly increasing within a process, a fresh node number in a forked child."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import TypeVar

import pytest
from pydantic import TypeAdapter

from seqproc.models import stamps
from seqproc.models.events import EventId
from seqproc.models.stamps import NODE_BITS, StampClock, next_stamp

NODE_MASK = (1 << NODE_BITS) - 1
T = TypeVar("T")


def drawn_in_threads(draw_one: Callable[[], T], per_thread: int, threads: int = 8) -> list[list[T]]:
    """What each of ``threads`` threads, started together, drew by calling ``draw_one`` ``per_thread`` times."""
    results: list[list[T]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads, timeout=30)  # a thread that never comes breaks it: the others fail, not hang

    def draw(out: list[T]) -> None:
        start.wait()
        out.extend(draw_one() for _ in range(per_thread))

    workers = [threading.Thread(target=draw, args=(out,)) for out in results]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers), "a drawing thread did not finish within 60 s"
    return results


def test_stamps_strictly_increase_across_threads() -> None:
    per_thread = 2_000
    results = drawn_in_threads(next_stamp, per_thread)
    everything = [s for out in results for s in out]
    assert len(everything) == len(results) * per_thread
    # No two stamps of the process are equal, and each thread sees them rise.
    assert len(set(everything)) == len(everything)
    for out in results:
        assert all(a < b for a, b in itertools.pairwise(out))
    # One process, one node number.
    assert len({s & NODE_MASK for s in everything}) == 1
    # And a stamp drawn afterwards is above all of them.
    assert next_stamp() > max(everything)


def test_stamps_rise_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = StampClock()
    readings = iter([5_000_000_000, 5_000_000_000, 4_000_000_000, 3_000_000_000, 6_000_000_000])
    monkeypatch.setattr(stamps.time, "time_ns", lambda: next(readings))
    drawn = [clock.next() for _ in range(5)]
    assert all(a < b for a, b in itertools.pairwise(drawn))
    assert len({s & NODE_MASK for s in drawn}) == 1
    # The clock came back ahead: stamps follow it again.
    assert drawn[-1] >> NODE_BITS == 6_000_000_000 >> NODE_BITS


def test_stamps_follow_the_wall_clock() -> None:
    # A fresh clock: the process clock may run a little ahead after a burst (each stamp steps 1024 ns).
    clock = StampClock()
    before = time.time_ns()
    stamp = clock.next()
    after = time.time_ns()
    assert (before >> NODE_BITS) - 1 <= stamp >> NODE_BITS <= (after >> NODE_BITS) + 1


def in_child(draw: Callable[[], object], *, fork: Callable[[], int] = os.fork) -> str:
    """Fork; the child calls ``draw`` once and writes what it got to a pipe, then leaves without any cleanup."""
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_end)
            os.write(write_end, str(draw()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data.decode()


def _stamp_in_child() -> int:
    return int(in_child(next_stamp))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_draws_a_new_node(monkeypatch: pytest.MonkeyPatch) -> None:
    parent_node = next_stamp() & NODE_MASK
    # The child's node is random; pin the draw to a value other than the parent's, so that the test shows the
    # re-draw at fork deterministically (without it, the child would keep the parent's node).
    other = (parent_node + 1) & NODE_MASK
    monkeypatch.setattr(stamps, "secrets", SimpleNamespace(randbelow=lambda _n: other))
    child_stamp = _stamp_in_child()
    assert child_stamp & NODE_MASK == other
    assert next_stamp() & NODE_MASK == parent_node


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_children_do_not_share_the_parent_node() -> None:
    parent_node = next_stamp() & NODE_MASK
    # Unpatched: each child draws at random, so one may match by chance (1 in 1024); three all matching would mean
    # the node is inherited.
    child_nodes = [_stamp_in_child() & NODE_MASK for _ in range(3)]
    assert any(node != parent_node for node in child_nodes)


def test_unique_ids_never_repeat_across_threads_and_are_valid_event_ids() -> None:
    per_thread = 5_000
    ids = [i for out in drawn_in_threads(stamps.unique_id, per_thread) for i in out]
    assert len(set(ids)) == len(ids)
    valid = TypeAdapter(EventId)
    for i in ids[:: per_thread // 10]:
        assert valid.validate_python(i) == i
        assert 17 <= len(i) <= 32
        assert set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_ids_of_its_own() -> None:
    child = in_child(stamps.unique_id)
    parent = stamps.unique_id()
    assert child[:16] != parent[:16]  # a new random prefix, not the parent's (whose counter the child would repeat)


def c_fork() -> int:
    """fork(2) from C, as uWSGI forks its workers: Python's at-fork hooks do not run in the child."""
    import ctypes

    return int(ctypes.CDLL(None).fork())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_without_python_hooks_draws_its_own_ids_and_node() -> None:
    parent_id, parent_node = stamps.unique_id(), next_stamp() & NODE_MASK
    children = [in_child(lambda: f"{stamps.unique_id()} {next_stamp() & NODE_MASK}", fork=c_fork) for _ in range(3)]
    assert all(child.split()[0][:16] != parent_id[:16] for child in children)  # a prefix of its own, by its pid
    assert len({child.split()[0][:16] for child in children}) == 3
    assert any(int(child.split()[1]) != parent_node for child in children)  # 1 in 1024 each to match by chance
