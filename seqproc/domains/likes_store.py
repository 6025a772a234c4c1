"""The likes domain's reads and writes, in the worker's transaction.

On PostgreSQL: set-based statements over arrays with constant text (psycopg prepares them), each batch's statements
in one pipeline (one round trip to load, one to write). On SQLite (the embedded mode, unit tests): SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection, bindparam, delete, func, insert, select, tuple_, update

from seqproc.models.db import array, columns, driver, pipeline, psycopg_driver, upsert
from seqproc.models.tables.base import table_of
from seqproc.models.tables.likes import ArticleLike, ArticleLikeCount, ArticleUnlike

if TYPE_CHECKING:
    from seqproc.domains.likes import LikeChanges, Pair, PairState

LIKES = table_of(ArticleLike)
UNLIKES = table_of(ArticleUnlike)
COUNTS = table_of(ArticleLikeCount)

LOAD_PAIRS = """
SELECT true, l.article_id, l.user_id, l.stamp
FROM article_like l JOIN unnest(%s::bigint[], %s::bigint[]) AS p(a, u) ON l.article_id = p.a AND l.user_id = p.u
UNION ALL
SELECT false, n.article_id, n.user_id, n.stamp
FROM article_unlike n JOIN unnest(%s::bigint[], %s::bigint[]) AS p(a, u) ON n.article_id = p.a AND n.user_id = p.u
"""
RESTAMP = """
UPDATE {table} t SET stamp = u.s FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS u(a, usr, s)
WHERE t.article_id = u.a AND t.user_id = u.usr
"""
DELETE_PAIRS = """
DELETE FROM {table} t USING unnest(%s::bigint[], %s::bigint[]) AS p(a, u) WHERE t.article_id = p.a AND t.user_id = p.u
"""
INSERT_PAIRS = (
    "INSERT INTO {table} (article_id, user_id, stamp) SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[])"
)
COUNT_GAINS = """
INSERT INTO article_like_count AS c (article_id, like_count)
SELECT * FROM unnest(%s::bigint[], %s::bigint[])
ON CONFLICT (article_id) DO UPDATE SET like_count = c.like_count + excluded.like_count, updated_at = now()
"""
COUNT_LOSSES = """
UPDATE article_like_count c SET like_count = c.like_count - u.d, updated_at = now()
FROM unnest(%s::bigint[], %s::bigint[]) AS u(a, d) WHERE c.article_id = u.a
"""
RECOUNT = """
INSERT INTO article_like_count AS c (article_id, like_count)
SELECT a, (SELECT count(*) FROM article_like l WHERE l.article_id = a) FROM unnest(%s::bigint[]) AS u(a)
ON CONFLICT (article_id) DO UPDATE SET like_count = excluded.like_count, updated_at = now()
"""


def load_pairs(conn: Connection, pairs: Sequence[Pair]) -> dict[Pair, PairState | None]:
    """The state of each pair: liked or unliked with the stamp of that action, or None (never acted on)."""
    return start_loading(conn, pairs)()


def start_loading(conn: Connection, pairs: Sequence[Pair]) -> Callable[[], dict[Pair, PairState | None]]:
    """Issue the read of ``pairs`` (on PostgreSQL, inside an enclosing pipeline, only sent); the function returned
    reads the answer."""
    if psycopg_driver(conn) and pairs:
        a, u = columns(pairs, 2)
        cursor = driver(conn).execute(LOAD_PAIRS, (a, u, a, u))
        return lambda: _found(pairs, cursor.fetchall())
    found = _read_core(conn, pairs)
    return lambda: found


def _found(pairs: Sequence[Pair], rows: Iterable[tuple[bool, int, int, int]]) -> dict[Pair, PairState | None]:
    from seqproc.domains.likes import PairState

    found: dict[Pair, PairState | None] = dict.fromkeys(pairs)
    for liked, article_id, user_id, stamp in rows:
        known = found[(article_id, user_id)]
        # The two tables are kept disjoint; if both ever held a pair, the newer stamp is the truth.
        if known is None or stamp > known.stamp:
            found[(article_id, user_id)] = PairState(liked, stamp)
    return found


def _read_core(conn: Connection, pairs: Sequence[Pair]) -> dict[Pair, PairState | None]:
    rows: list[tuple[bool, int, int, int]] = []
    if pairs:
        for table, liked in ((LIKES, True), (UNLIKES, False)):
            for article_id, user_id, stamp in conn.execute(
                select(table.c.article_id, table.c.user_id, table.c.stamp).where(
                    tuple_(table.c.article_id, table.c.user_id).in_(list(pairs))
                )
            ):
                rows.append((liked, article_id, user_id, stamp))
    return _found(pairs, rows)


def write(conn: Connection, changes: LikeChanges) -> None:
    if conn.dialect.name == "postgresql":
        _write_pg(conn, changes)
    else:
        _write_core(conn, changes)


def _table(liked: bool) -> str:
    return "article_like" if liked else "article_unlike"


def _write_pg(conn: Connection, changes: LikeChanges) -> None:
    pg = driver(conn)
    with pipeline(conn):
        for liked, rows in changes.restamped.items():
            if rows:
                pg.execute(RESTAMP.format(table=_table(liked)), columns(rows, 3))
        if changes.flipped:
            a, u = columns(changes.flipped, 2)
            pg.execute(DELETE_PAIRS.format(table="article_like"), (a, u))
            pg.execute(DELETE_PAIRS.format(table="article_unlike"), (a, u))
        for liked, rows in changes.inserts.items():
            if rows:
                pg.execute(INSERT_PAIRS.format(table=_table(liked)), columns(rows, 3))
        if changes.gained:
            pg.execute(COUNT_GAINS, (array(changes.gained), array(changes.gained.values())))
        if changes.lost:
            pg.execute(COUNT_LOSSES, (array(changes.lost), array(changes.lost.values())))
        if changes.recount:
            pg.execute(RECOUNT, (array(changes.recount),))


def _write_core(conn: Connection, changes: LikeChanges) -> None:
    for liked, rows in changes.restamped.items():
        if rows:
            table = LIKES if liked else UNLIKES
            conn.execute(
                update(table)
                .where(table.c.article_id == bindparam("a"), table.c.user_id == bindparam("u"))
                .values(stamp=bindparam("s")),
                [{"a": a, "u": u, "s": s} for a, u, s in rows],
            )
    if changes.flipped:
        for table in (LIKES, UNLIKES):
            conn.execute(delete(table).where(tuple_(table.c.article_id, table.c.user_id).in_(changes.flipped)))
    for liked, rows in changes.inserts.items():
        if rows:
            conn.execute(
                insert(LIKES if liked else UNLIKES), [{"article_id": a, "user_id": u, "stamp": s} for a, u, s in rows]
            )
    if changes.gained:
        stmt = upsert(conn, COUNTS)
        # like_count in the VALUES is the gain; a new row starts from it.
        stmt = stmt.on_conflict_do_update(
            index_elements=[COUNTS.c.article_id],
            set_={"like_count": COUNTS.c.like_count + stmt.excluded.like_count, "updated_at": func.now()},
        )
        conn.execute(stmt, [{"article_id": a, "like_count": d} for a, d in changes.gained.items()])
    if changes.lost:
        # An article that loses likes had them, so its row exists. (An upsert with a negative value would fail:
        # PostgreSQL checks the CHECK constraint on the row it would have inserted.)
        conn.execute(
            update(COUNTS)
            .where(COUNTS.c.article_id == bindparam("a"))
            .values(like_count=COUNTS.c.like_count - bindparam("d"), updated_at=func.now()),
            [{"a": a, "d": d} for a, d in changes.lost.items()],
        )
    for article_id in changes.recount:
        counted = conn.execute(
            select(func.count()).select_from(LIKES).where(LIKES.c.article_id == article_id)
        ).scalar_one()
        stmt = upsert(conn, COUNTS).values(article_id=article_id, like_count=counted)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[COUNTS.c.article_id], set_={"like_count": counted, "updated_at": func.now()}
            )
        )
