"""One line per fault test with what was measured (``pytest tests/faults -s | grep FAULT``): the fault matrix of the
docs and of the closing notes comes from these lines, not from memory.

"doubled" is never counted from ledger rows: their key is the primary key, so they cannot exceed what was sent. It
is counted from totals that a doubled effect would push past what was sent, whatever the ledger says: units
received against units restocked (:func:`units_doubled`), like counts against like rows, and each product's
reserve/release/commit chain against what it received (:func:`doubled_in_tables`)."""

from __future__ import annotations

from sqlalchemy import Connection, text

#: Like counts above their rows (a like counted twice: the pair's row is there once, its count twice).
LIKES_OVERCOUNTED = """
SELECT coalesce(sum(greatest(0, c.like_count - coalesce(r.n, 0))), 0)
FROM article_like_count c
LEFT JOIN (SELECT article_id, count(*) AS n FROM article_like GROUP BY article_id) r USING (article_id)
"""
#: Units whose chain does not add up: on the shelf, reserved and sold against what was received (a release applied
#: twice puts a unit back twice; a reserve applied twice takes it twice), and reserved against the active
#: reservations (a reservation counted twice).
STOCK_CHAINS_BROKEN = """
SELECT coalesce(sum(abs(s.available + s.reserved + s.sold - s.total_received)
                    + abs(s.reserved - coalesce(r.q, 0))), 0)
FROM product_stock s
LEFT JOIN (SELECT product_id, sum(quantity) AS q FROM reservation WHERE status = 'active' GROUP BY product_id) r
    USING (product_id)
"""


def units_doubled(received: int, sent: int) -> int:
    """Units received beyond the units the test restocked (restocks of one unit, each with a fresh key)."""
    return max(0, received - sent)


def doubled_in_tables(conn: Connection) -> int:
    """Effects the tables count twice, read from the tables' own totals (see the module's doc)."""
    return int(conn.execute(text(LIKES_OVERCOUNTED)).scalar_one()) + int(
        conn.execute(text(STOCK_CHAINS_BROKEN)).scalar_one()
    )


def report(
    fault: str,
    *,
    injected: int,
    sent: int,
    lost: int,
    doubled: int,
    out_of_order: int,
    lost_detected: int | None = None,
) -> None:
    """``lost_detected``: for direct publishes, the events seqproc's loss detection counted lost."""
    detected = "" if lost_detected is None else f" lost_detected={lost_detected}"
    print(
        f"FAULT | {fault} | injected {injected} | events {sent} | lost={lost} doubled={doubled} "
        f"out_of_order={out_of_order}{detected}"
    )


def report_units(conn: Connection, fault: str, *, injected: int, sent: int, received: int) -> None:
    """``report`` for a test whose events are restocks of one unit each (fresh keys): ``received`` units short of
    ``sent`` are lost, over it doubled (with whatever else the tables count twice)."""
    report(
        fault,
        injected=injected,
        sent=sent,
        lost=max(0, sent - received),
        doubled=units_doubled(received, sent) + doubled_in_tables(conn),
        out_of_order=0,
    )
