"""Before consuming, the worker settles its heap: what start-up left is frozen out of the collector's way, and the
young generation is collected less often (a flush allocates tens of thousands of short-lived objects)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from seqproc.worker.runner import YOUNG_GC_THRESHOLD, settle_heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_settle_heap_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    long_lived = [object() for _ in range(1000)]
    _, middle, old = gc.get_threshold()
    settle_heap()
    assert gc.get_freeze_count() >= len(long_lived)
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, middle, old)
    # Cycles are still collected: only less often.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
