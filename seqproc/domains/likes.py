"""Likes, keyed by article: set membership per (article, user), the count follows, and the last action by stamp wins.

A built-in domain on the public API (``seqproc.Domain``): ``load`` reads the (article, user) pairs a batch touches,
``apply`` runs the rule (:func:`decide`) per event in memory, ``save`` writes what changed (:func:`diff`) in one go.
Tables: ``article_like`` (exactly the current likes), ``article_unlike`` (the stamps of unlikes),
``article_like_count``. Invariant: like_count == the article's rows in ``article_like``, after every commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from seqproc.models.domain import Applied, Domain, EventModel, Rejected
from seqproc.models.fields import Id
from seqproc.models.outcomes import Outcome

domain = Domain("likes", key="article_id", entity="article", type_prefix="")


@domain.event("like")
class Like(EventModel):
    """``user_id`` likes ``article_id`` (a repeated like changes nothing)."""

    article_id: Id
    user_id: Id


@domain.event("unlike")
class Unlike(EventModel):
    """``user_id`` takes back their like of ``article_id`` (an unlike without a like changes nothing)."""

    article_id: Id
    user_id: Id


@domain.event("reconcile", public=False)
class Reconcile(EventModel):
    """Control event, sent by the reconcile job: set the article's like_count to its number of like rows, in the
    partition's own transaction (a fix through the queue never races the worker). Not for application code."""

    article_id: Id


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
    stamp = event.stamp or 0
    if current is not None and stamp <= current.stamp:
        return current, STALE
    if isinstance(event, Like):
        outcome = ALREADY_LIKED if current is not None and current.liked else APPLIED
        return PairState(True, stamp), outcome
    outcome = APPLIED if current is not None and current.liked else NOT_LIKED
    return PairState(False, stamp), outcome


def evaluate(
    initial: Mapping[Pair, PairState | None], events: Sequence[Like | Unlike]
) -> tuple[dict[Pair, PairState | None], list[Outcome]]:
    """Run the rule over ``events`` in order from ``initial``: the final state of every pair, and the outcomes."""
    state = dict(initial)
    outcomes = []
    for event in events:
        pair = (event.article_id, event.user_id)
        state[pair], outcome = decide(state.get(pair), event)
        outcomes.append(outcome)
    return state, outcomes


@dataclass
class LikeChanges:
    """The rows to write. A pair lives in exactly one of ``article_like`` / ``article_unlike``: the one its newest
    action says; ``flipped`` pairs move from one to the other (or appear)."""

    #: Same membership, newer stamp: (article, user, stamp), by table (True: article_like).
    restamped: dict[bool, list[tuple[int, int, int]]] = field(default_factory=lambda: {True: [], False: []})
    #: Pairs whose membership changed (or that are new): delete from both tables, then insert into ``inserts``.
    flipped: list[Pair] = field(default_factory=list)
    inserts: dict[bool, list[tuple[int, int, int]]] = field(default_factory=lambda: {True: [], False: []})
    #: like_count changes per article: gains (the row may not exist yet) and losses (it does).
    gained: dict[int, int] = field(default_factory=dict)
    lost: dict[int, int] = field(default_factory=dict)
    #: Articles whose like_count is set to their number of like rows (reconcile), after the other writes.
    recount: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.flipped or self.restamped[True] or self.restamped[False] or self.recount)


def diff(initial: Mapping[Pair, PairState | None], final: Mapping[Pair, PairState | None]) -> LikeChanges:
    changes = LikeChanges()
    delta: dict[int, int] = defaultdict(int)
    for pair, after in final.items():
        before = initial.get(pair)
        if after is None or after == before:
            continue
        if before is not None and before.liked == after.liked:
            changes.restamped[after.liked].append((pair[0], pair[1], after.stamp))
            continue
        changes.flipped.append(pair)
        changes.inserts[after.liked].append((pair[0], pair[1], after.stamp))
        delta[pair[0]] += int(after.liked) - int(bool(before and before.liked))
    changes.gained = {a: d for a, d in sorted(delta.items()) if d > 0}
    changes.lost = {a: -d for a, d in sorted(delta.items()) if d < 0}
    return changes


@dataclass
class ArticleLikes:
    """One article as a batch sees it: the pairs its events touch (None: never acted on), as loaded and as now."""

    article_id: int
    initial: dict[Pair, PairState | None]
    pairs: dict[Pair, PairState | None]
    recount: bool = False


@domain.load
def load(conn: Any, keys: Sequence[int], events: Sequence[EventModel]) -> dict[int, ArticleLikes]:
    return prefetch(conn, keys, events)()


def prefetch(conn: Any, keys: Sequence[int], events: Sequence[EventModel]) -> Callable[[], dict[int, ArticleLikes]]:
    """The load in two steps (the worker sends its statement with the ledger's claim: see ``Domain.prefetch``)."""
    pairs = list(dict.fromkeys((e.article_id, e.user_id) for e in events if isinstance(e, _PAIR_EVENTS)))
    from seqproc.domains import likes_store  # the SQL and its tables: loaded by workers, not producers

    reading = likes_store.start_loading(conn, pairs)

    def states() -> dict[int, ArticleLikes]:
        by_article = {article: ArticleLikes(article, {}, {}) for article in keys}
        for pair, state in reading().items():
            article = by_article[pair[0]]
            article.initial[pair] = state
            article.pairs[pair] = state
        return by_article

    return states


domain.prefetch = prefetch

#: The events about one (article, user) pair (a tuple: ``isinstance`` with ``Like | Unlike`` builds the union
#: each time).
_PAIR_EVENTS = (Like, Unlike)


@domain.apply
def apply(state: ArticleLikes, event: EventModel) -> Applied | Rejected:
    if isinstance(event, Reconcile):
        state.recount = True
        return Applied("recounted")
    event = cast("Like | Unlike", event)  # the engine hands a domain only its own events
    pair = (event.article_id, event.user_id)
    state.pairs[pair], outcome = decide(state.pairs.get(pair), event)
    return Applied(outcome.reason) if outcome.status == "applied" else Rejected(outcome.reason or "rejected")


@domain.save
def save(conn: Any, changed: dict[int, ArticleLikes]) -> None:
    initial: dict[Pair, PairState | None] = {}
    final: dict[Pair, PairState | None] = {}
    for article in changed.values():
        initial.update(article.initial)
        final.update(article.pairs)
    changes = diff(initial, final)
    changes.recount = sorted(a.article_id for a in changed.values() if a.recount)
    from seqproc.domains import likes_store

    likes_store.write(conn, changes)


__all__ = [
    "ArticleLikes",
    "Like",
    "LikeChanges",
    "Pair",
    "PairState",
    "Reconcile",
    "Unlike",
    "decide",
    "diff",
    "domain",
    "evaluate",
]
