"""Routing is pinned: a key that moved partition would have two writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seqproc.models.wire import article_key, partition_for, partition_of_queue, product_key, queue_name

#: Computed once with crc32 and written down: any change to the routing function breaks this table.
PINNED = [
    ("article:1", 16, 0),
    ("article:0", 16, 6),
    ("article:42", 16, 15),
    ("product:7", 16, 14),
    ("product:123456789", 16, 15),
    ("article:1", 64, 32),
    ("product:1", 1024, 331),
]


@pytest.mark.parametrize(("key", "partitions", "expected"), PINNED)
def test_partition_for_is_pinned(key: str, partitions: int, expected: int) -> None:
    assert partition_for(key, partitions) == expected


def test_entity_keys_are_spelled_as_routed() -> None:
    assert article_key(42) == "article:42"
    assert product_key(7) == "product:7"
    assert partition_for(article_key(42), 16) == 15


@pytest.mark.parametrize("partitions", [1, 2, 16, 1024])
def test_partition_is_in_range(partitions: int) -> None:
    for n in range(500):
        assert 0 <= partition_for(f"article:{n}", partitions) < partitions


def test_queue_names() -> None:
    assert queue_name(0) == "seqproc.p00"
    assert queue_name(7) == "seqproc.p07"
    assert queue_name(15) == "seqproc.p15"
    assert queue_name(100) == "seqproc.p100"


@pytest.mark.parametrize("partition", [0, 1, 9, 15, 63, 1023])
def test_partition_of_queue_round_trip(partition: int) -> None:
    assert partition_of_queue(queue_name(partition)) == partition


@pytest.mark.parametrize("name", ["celery", "seqproc.p", "seqproc.pxx", "seqproc.p-1", "other.p01", "seqproc.p1a"])
def test_partition_of_queue_rejects_other_names(name: str) -> None:
    assert partition_of_queue(name) is None


_CHILD = (
    "import json, sys; from seqproc.models.wire import partition_for; "
    "keys = json.loads(sys.argv[1]); print(json.dumps([partition_for(k, 16) for k in keys]))"
)


def test_routing_does_not_depend_on_hash_seed() -> None:
    keys = [f"article:{n}" for n in range(50)] + [f"product:{n}" for n in range(50)]
    results = []
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(keys)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        results.append(json.loads(done.stdout))
    here = [partition_for(k, 16) for k in keys]
    assert results == [here, here, here]
    # The keys spread over the partitions: a constant function would pass the comparison above too.
    assert len(set(here)) == 16
