"""Several partitions in one transaction: independent outcomes, one fence check each."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, insert

from seqproc.models.errors import PartitionFenced
from seqproc.models.events import parse_event
from seqproc.models.tables.base import table_of
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import article_key, partition_for
from seqproc.worker.engine.apply import PartitionBatch, apply_partitions
from seqproc.worker.ops.inspect import article_state


def like(article: int, user: int, n: int):  # type: ignore[no-untyped-def]
    return parse_event(
        {"type": "like", "key": f"k{n}", "id": f"e{n}", "stamp": 1000 + n, "article_id": article, "user_id": user}
    )


def two_partitions() -> tuple[int, int, int, int]:
    """Two articles that route to different partitions (out of 16)."""
    first = 1
    second = next(a for a in range(2, 100) if partition_for(article_key(a), 16) != partition_for(article_key(1), 16))
    return first, partition_for(article_key(first), 16), second, partition_for(article_key(second), 16)


@pytest.fixture
def epochs(sqlite_engine: Engine) -> Engine:
    with sqlite_engine.begin() as conn:
        conn.execute(insert(table_of(Partition)), [{"partition": p, "epoch": 5} for p in range(16)])
    return sqlite_engine


def test_each_partition_gets_its_own_outcomes(epochs: Engine) -> None:
    a, pa, b, pb = two_partitions()
    with epochs.begin() as conn:
        results = apply_partitions(
            conn,
            [
                PartitionBatch(pa, [like(a, 1, 1), like(a, 2, 2), like(a, 1, 1)], epoch=5),
                PartitionBatch(pb, [like(b, 1, 3)], epoch=5),
            ],
        )
    assert [o.status for o in results[0].outcomes] == ["applied", "applied", "duplicate"]
    assert [o.status for o in results[1].outcomes] == ["applied"]
    assert (results[0].applied, results[0].duplicates, results[1].applied) == (2, 1, 1)
    with epochs.connect() as conn:
        assert article_state(conn, a)["like_count"] == 2
        assert article_state(conn, b)["like_count"] == 1


def test_a_stale_epoch_names_its_partition_and_nothing_is_committed(epochs: Engine) -> None:
    a, pa, b, pb = two_partitions()
    with pytest.raises(PartitionFenced) as caught, epochs.begin() as conn:
        apply_partitions(
            conn,
            [PartitionBatch(pa, [like(a, 1, 1)], epoch=5), PartitionBatch(pb, [like(b, 1, 2)], epoch=4)],
        )
    assert caught.value.partitions == [pb]
    with epochs.connect() as conn:  # the transaction rolled back: neither partition's event took effect
        assert article_state(conn, a)["like_count"] == 0
        assert article_state(conn, b)["like_count"] == 0
