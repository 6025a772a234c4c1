"""Likes: set membership per (article, user), the count follows, and the last action by stamp wins.

Pure functions only: :func:`decide` is the rule for one event, :func:`evaluate` runs it over a batch in order, and
:func:`diff` says which rows must change. The stores (``worker.store_sql``, ``worker.store_pg``) load the state of
the pairs a batch touches and write the :class:`LikeChanges`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from seqproc.models.events import Like, Unlike
from seqproc.models.outcomes import Outcome

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

    def __bool__(self) -> bool:
        return bool(self.flipped or self.restamped[True] or self.restamped[False])


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
