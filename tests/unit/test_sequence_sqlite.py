"""Loss detection through ``apply_batch`` on the portable store (SQLite): the same sequences and gaps as on
PostgreSQL (``tests/integration/test_loss_detection.py``), and :func:`advance` on its own."""

from __future__ import annotations

from sqlalchemy import Engine, text

from seqproc.worker.engine.apply import apply_batch
from seqproc.worker.engine.sequence import Gap, Sequenced, advance, declare_lost

P = 3


def arrive(engine: Engine, *messages: Sequenced, partition: int = P) -> None:
    with engine.begin() as conn:
        apply_batch(conn, partition, [], epoch=None, sequences=messages)


def gaps(engine: Engine) -> list[tuple[str, int, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT producer, partition, first_seq, count FROM seqproc_sequence_gap ORDER BY 1, 2, 3")
        )
        return [(str(a), int(b), int(c), int(d)) for a, b, c, d in rows]


def next_seqs(engine: Engine) -> dict[tuple[str, int], int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT producer, partition, next_seq FROM seqproc_producer_sequence"))
        return {(str(a), int(b)): int(c) for a, b, c in rows}


def test_sequences_move_and_gaps_open_and_fill_as_on_postgresql(sqlite_engine: Engine) -> None:
    arrive(sqlite_engine, Sequenced("a", 1, 2), Sequenced("a", 3, 1), Sequenced("b", 1, 1))
    assert next_seqs(sqlite_engine) == {("a", P): 4, ("b", P): 2}
    assert gaps(sqlite_engine) == []
    arrive(sqlite_engine, Sequenced("a", 8, 2))  # 4..7 did not come
    assert gaps(sqlite_engine) == [("a", P, 4, 4)]
    arrive(sqlite_engine, Sequenced("a", 5, 1), Sequenced("a", 1, 2))  # late: 5 fills; 1-2 is a copy
    assert gaps(sqlite_engine) == [("a", P, 4, 1), ("a", P, 6, 2)]
    assert next_seqs(sqlite_engine)[("a", P)] == 10
    arrive(sqlite_engine, Sequenced("a", 1, 3), partition=P + 1)  # another partition: a sequence of its own
    assert next_seqs(sqlite_engine)[("a", P + 1)] == 4
    with sqlite_engine.begin() as conn:
        assert sorted((g.producer, g.first, g.count) for g in declare_lost(conn, grace_s=0)) == [
            ("a", 4, 1),
            ("a", 6, 2),
        ]


def test_advance_moves_each_stream_in_the_order_received() -> None:
    moves = advance(
        {("a", 0): 5, ("b", 0): 2},
        [(0, [Sequenced("a", 5, 2), Sequenced("a", 9, 1), Sequenced("b", 1, 1)]), (1, [Sequenced("a", 1, 1)])],
    )
    assert moves.next_seqs == {("a", 0): 10, ("a", 1): 2}  # b stood where it was: nothing to write for it
    assert moves.gaps == [Gap("a", 0, 7, 2)]
    assert moves.late == [(0, Sequenced("b", 1, 1))]


def test_advance_fills_a_hole_its_own_batch_opened_and_a_mark_fills_nothing() -> None:
    # 3 came before 2 (a redelivery behind a newer message): the hole 2 opened is filled in the same batch.
    moves = advance({}, [(0, [Sequenced("a", 1, 1), Sequenced("a", 3, 1), Sequenced("a", 2, 1)])])
    assert moves.gaps == []
    assert moves.next_seqs == {("a", 0): 4}
    # Only part of a hole filled: what is left stays, on both sides.
    moves = advance({}, [(0, [Sequenced("a", 10, 1), Sequenced("a", 4, 2)])])
    assert moves.gaps == [Gap("a", 0, 1, 3), Gap("a", 0, 6, 4)]
    # A mark (no event) that starts behind where its stream stands is neither late nor a filler.
    moves = advance({("a", 0): 8}, [(0, [Sequenced("a", 5, 0)])])
    assert moves.gaps == []
    assert moves.late == []
    assert moves.next_seqs == {}
