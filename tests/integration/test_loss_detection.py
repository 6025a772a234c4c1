"""Loss detection in the apply transaction (``worker.engine.sequence``), on PostgreSQL: a gap in a producer's
sequence of a partition is recorded, filled by a late message, declared lost after the grace, and shown by
``seqproc status --json``; the producer numbers its events and gives back the numbers of a send that never went."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from seqproc.domains.likes import Like
from seqproc.models.settings import Settings
from seqproc.producer.sequence import Sequencer
from seqproc.worker.engine.apply import apply_batch
from seqproc.worker.engine.sequence import Sequenced, declare_lost, lost_total
from tests.integration.test_status import status_json

pytestmark = pytest.mark.services

P = 3


def gaps(engine: Engine) -> list[tuple[str, int, int, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT producer, first_seq, count, declared_at IS NOT NULL FROM seqproc_sequence_gap "
                "WHERE partition = :p ORDER BY producer, first_seq"
            ),
            {"p": P},
        )
        return [(str(a), int(b), int(c), bool(d)) for a, b, c, d in rows]


def arrive(engine: Engine, *messages: Sequenced) -> None:
    with engine.begin() as conn:
        apply_batch(conn, P, [], epoch=None, sequences=messages)


def test_a_gap_is_recorded_filled_by_a_late_message_and_declared_lost_only_past_the_grace(
    clean: Settings, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM seqproc_producer_sequence WHERE producer LIKE 'test-%'"))
    arrive(engine, Sequenced("test-a", 1, 2), Sequenced("test-a", 3, 1), Sequenced("test-b", 1, 1))
    assert gaps(engine) == []
    arrive(engine, Sequenced("test-a", 8, 2))  # 4..7 did not come
    assert gaps(engine) == [("test-a", 4, 4, False)]
    arrive(engine, Sequenced("test-a", 5, 1), Sequenced("test-a", 1, 2))  # late: 5 fills; 1-2 is a copy
    assert gaps(engine) == [("test-a", 4, 1, False), ("test-a", 6, 2, False)]
    arrive(engine, Sequenced("test-b", 3, 1))  # a producer's first numbers never came: 2
    with engine.begin() as conn:
        assert declare_lost(conn, grace_s=3600) == []  # still within the grace: may come yet
    with engine.begin() as conn:
        declared = declare_lost(conn, grace_s=0)
    assert sorted((g.producer, g.first, g.count) for g in declared) == [
        ("test-a", 4, 1),
        ("test-a", 6, 2),
        ("test-b", 2, 1),
    ]
    arrive(engine, Sequenced("test-a", 6, 1))  # counted lost already: stays counted (a counter never goes back)
    with engine.connect() as conn:
        assert lost_total(conn) == 4
    assert status_json(clean)["totals"]["lost"] == 4
    with engine.begin() as conn:
        assert declare_lost(conn, grace_s=0) == []  # declared once


def test_a_late_message_fills_a_gap_opened_in_its_own_batch_and_many_late_ones_fill_in_one_read(
    clean: Settings, engine: Engine
) -> None:
    """A redelivery can bring an older message behind a newer one in the same batch: the gap the newer one opened is
    filled by the older one before anything is recorded. Hundreds of late messages (a failover's restore) fill
    what they cover of recorded gaps, the pieces left keeping when they were detected."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM seqproc_producer_sequence WHERE producer LIKE 'test-%'"))
    arrive(engine, Sequenced("test-c", 1, 3), Sequenced("test-c", 8, 2), Sequenced("test-c", 5, 1))
    assert [g for g in gaps(engine) if g[0] == "test-c"] == [("test-c", 4, 1, False), ("test-c", 6, 2, False)]
    arrive(engine, Sequenced("test-d", 1, 1), Sequenced("test-d", 1000, 1))  # 2..999 did not come
    with engine.connect() as conn:
        detected = conn.execute(
            text("SELECT detected_at FROM seqproc_sequence_gap WHERE producer = 'test-d'")
        ).scalar_one()
    arrive(engine, *(Sequenced("test-d", n, 1) for n in range(2, 999, 2)))  # every even number, late
    odd = [("test-d", n, 1, False) for n in range(3, 1000, 2)]
    assert [g for g in gaps(engine) if g[0] == "test-d"] == odd
    with engine.connect() as conn:
        assert set(
            conn.execute(text("SELECT detected_at FROM seqproc_sequence_gap WHERE producer = 'test-d'")).scalars()
        ) == {detected}


def test_the_apply_transaction_moves_the_sequence_with_its_events(clean: Settings, engine: Engine) -> None:
    """In the same transaction as the events: a batch rolled back leaves the sequence where it was."""
    event = Like(article_id=7, user_id=1, key="seq-like-1", id="seq-like-1", stamp=1)
    with engine.connect() as conn:
        apply_batch(conn, P, [event], epoch=None, sequences=[Sequenced("test-tx", 1, 1)])
        conn.rollback()
    with engine.begin() as conn:
        apply_batch(conn, P, [event], epoch=None, sequences=[Sequenced("test-tx", 2, 1)])
    assert ("test-tx", 1, 1, False) in gaps(engine)


def test_the_producer_numbers_each_partition_from_one_and_gives_back_what_was_not_sent() -> None:
    sequencer = Sequencer()
    first = sequencer.number([(1, ["a", "b"]), (2, ["c"])])  # type: ignore[list-item]
    producer = first[0][0]
    assert first == [(producer, 1), (producer, 1)]
    failed = [(1, ["d"])]
    places = sequencer.number(failed)  # type: ignore[arg-type]
    assert places == [(producer, 3)]
    sequencer.give_back(failed, places)  # type: ignore[arg-type]  # not sent at all: no gap is left
    assert sequencer.number([(1, ["e"])]) == [(producer, 3)]  # type: ignore[list-item]
