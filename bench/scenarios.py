"""The three workloads: one hot article, likes spread over 1,000 articles, and a flash sale (one product, stock
smaller than demand). Each producer gets its own list of events, known before the run, so that every strategy
applies exactly the same work and the final state can be checked against a model."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Kind = Literal["like", "reserve"]

SCENARIOS = ("hot", "spread", "flash")
SPREAD_ARTICLES = 1_000
HOT_ARTICLE = 1
FLASH_PRODUCT = 1
#: Where a producer process's warm-up like goes (``--warm-up other-article``): an article no scenario touches.
WARM_UP_ARTICLE = SPREAD_ARTICLES + 1


@dataclass(frozen=True)
class Op:
    """One event of the workload: a like (entity = article, n = user) or a 1-unit reserve (entity = product,
    n = reservation number)."""

    kind: Kind
    entity: int
    n: int


@dataclass(frozen=True)
class Workload:
    scenario: str
    producers: int
    events_per_producer: int
    ops: tuple[tuple[Op, ...], ...]
    #: Flash sale: the units on sale (half the demand: most buyers must be refused, none oversold).
    stock: int = 0

    @property
    def total(self) -> int:
        return self.producers * self.events_per_producer

    def expected_likes(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for ops in self.ops:
            for op in ops:
                counts[op.entity] = counts.get(op.entity, 0) + 1
        return counts


def workload(scenario: str, producers: int, events_per_producer: int, *, seed: int = 7) -> Workload:
    """Every like is by a distinct user, so every event changes the count: the hot row is written every time."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)} (got {scenario!r})")
    rng = random.Random(seed)
    ops = []
    for p in range(producers):
        mine = []
        for i in range(events_per_producer):
            n = p * events_per_producer + i + 1
            if scenario == "hot":
                mine.append(Op("like", HOT_ARTICLE, n))
            elif scenario == "spread":
                mine.append(Op("like", rng.randint(1, SPREAD_ARTICLES), n))
            else:
                mine.append(Op("reserve", FLASH_PRODUCT, n))
        ops.append(tuple(mine))
    stock = producers * events_per_producer // 2 if scenario == "flash" else 0
    return Workload(scenario, producers, events_per_producer, tuple(ops), stock)
