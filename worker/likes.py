"""Likes: set membership per (article, user), the count follows, and the last action by stamp wins.

The rule is a pure function (:func:`decide`) so that it can be checked exhaustively; :func:`apply_likes` loads the
state of the pairs a batch touches, runs the rule over the events in order in memory, and writes only the pairs
that changed, with one statement per table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, func, insert, select, tuple_, update

from models.base import table_of
from models.events import Like, Unlike
from models.likes import ArticleLike, ArticleLikeCount, ArticleUnlike
from models.outcomes import Outcome
from worker.sql import upsert

LIKES = table_of(ArticleLike)
UNLIKES = table_of(ArticleUnlike)
COUNTS = table_of(ArticleLikeCount)

Pair = tuple[int, int]

APPLIED = Outcome("applied")
ALREADY_LIKED = Outcome("applied", "already_liked")
NOT_LIKED = Outcome("applied", "not_liked")
STALE = Outcome("rejected", "stale")


@dataclass(frozen=True, slots=True)
class PairState:
    """What is known of one user on one article: liked or not, and the stamp of the action that decided it."""

    liked: bool
    stamp: int


def decide(current: PairState | None, event: Like | Unlike) -> tuple[PairState | None, Outcome]:
    """The new state and the outcome of ``event`` given ``current``.

    An event whose stamp is not newer than the last applied one for the pair changes nothing (``stale``): so
    whatever order the events arrive in, the action with the largest stamp decides.
    """
    if current is not None and event.stamp <= current.stamp:
        return current, STALE
    if event.type == "like":
        outcome = ALREADY_LIKED if current is not None and current.liked else APPLIED
        return PairState(True, event.stamp), outcome
    outcome = APPLIED if current is not None and current.liked else NOT_LIKED
    return PairState(False, event.stamp), outcome


def apply_likes(conn: Connection, events: Sequence[Like | Unlike]) -> list[Outcome]:
    """Apply ``events`` (new ones: the ledger has already filtered duplicates) in order; return their outcomes."""
    if not events:
        return []
    pairs = list({(event.article_id, event.user_id) for event in events})
    initial = _load(conn, pairs)
    state = dict(initial)
    outcomes = []
    for event in events:
        pair = (event.article_id, event.user_id)
        state[pair], outcome = decide(state.get(pair), event)
        outcomes.append(outcome)
    _store(conn, initial, state)
    return outcomes


def _load(conn: Connection, pairs: list[Pair]) -> dict[Pair, PairState | None]:
    found: dict[Pair, PairState | None] = dict.fromkeys(pairs)
    for table, liked in ((LIKES, True), (UNLIKES, False)):
        rows = conn.execute(
            select(table.c.article_id, table.c.user_id, table.c.stamp).where(
                tuple_(table.c.article_id, table.c.user_id).in_(pairs)
            )
        )
        for article_id, user_id, stamp in rows:
            known = found[(article_id, user_id)]
            # The two tables are kept disjoint; if both ever held a pair, the newer stamp is the truth.
            if known is None or stamp > known.stamp:
                found[(article_id, user_id)] = PairState(liked, stamp)
    return found


def _store(conn: Connection, initial: dict[Pair, PairState | None], final: dict[Pair, PairState | None]) -> None:
    flipped: list[Pair] = []
    restamped: dict[bool, list[dict[str, int]]] = {True: [], False: []}
    delta: dict[int, int] = defaultdict(int)
    for pair, after in final.items():
        before = initial[pair]
        if after is None or after == before:
            continue
        if before is not None and before.liked == after.liked:
            # Same membership, newer stamp: keep the row (and its liked_at), move the stamp.
            restamped[after.liked].append({"a": pair[0], "u": pair[1], "s": after.stamp})
            continue
        flipped.append(pair)
        delta[pair[0]] += int(after.liked) - int(bool(before and before.liked))
    for liked, rows in restamped.items():
        if rows:
            table = LIKES if liked else UNLIKES
            conn.execute(
                update(table)
                .where(table.c.article_id == bindparam("a"), table.c.user_id == bindparam("u"))
                .values(stamp=bindparam("s")),
                rows,
            )
    if not flipped:
        return
    # A pair lives in exactly one of the two tables: the one its newest action says.
    conn.execute(delete(LIKES).where(tuple_(LIKES.c.article_id, LIKES.c.user_id).in_(flipped)))
    conn.execute(delete(UNLIKES).where(tuple_(UNLIKES.c.article_id, UNLIKES.c.user_id).in_(flipped)))
    rows_by_table: dict[bool, list[dict[str, int]]] = {True: [], False: []}
    for article_id, user_id in flipped:
        state = final[(article_id, user_id)]
        assert state is not None
        rows_by_table[state.liked].append({"article_id": article_id, "user_id": user_id, "stamp": state.stamp})
    for liked, rows in rows_by_table.items():
        if rows:
            conn.execute(insert(LIKES if liked else UNLIKES), rows)
    gained = [{"article_id": a, "like_count": d} for a, d in sorted(delta.items()) if d > 0]
    lost = [{"a": a, "d": -d} for a, d in sorted(delta.items()) if d < 0]
    if gained:
        stmt = upsert(conn, COUNTS)
        # like_count in the VALUES is the gain; a new row starts from it.
        stmt = stmt.on_conflict_do_update(
            index_elements=[COUNTS.c.article_id],
            set_={"like_count": COUNTS.c.like_count + stmt.excluded.like_count, "updated_at": func.now()},
        )
        conn.execute(stmt, gained)
    if lost:
        # An article that loses likes had them, so its row exists. (An upsert with a negative value would fail:
        # PostgreSQL checks the CHECK constraint on the row it would have inserted.)
        conn.execute(
            update(COUNTS)
            .where(COUNTS.c.article_id == bindparam("a"))
            .values(like_count=COUNTS.c.like_count - bindparam("d"), updated_at=func.now()),
            lost,
        )
