"""Worker liveness in PostgreSQL (``worker/ownership/liveness.py``), the conditional claim, and the fixed set's tick
(``worker/ownership/static.py``), without worker processes: the states a partition's owner can be in, as the
claim, the static worker and ``seqproc status`` read them."""

from __future__ import annotations

import logging
import time

import pytest
import redis
from sqlalchemy import Engine, delete, select

from seqproc.models.settings import Settings
from seqproc.models.tables.partition import Partition, Worker
from seqproc.worker.ops.lag import collect
from seqproc.worker.ownership.liveness import beat, live_workers, ownership, release
from seqproc.worker.ownership.partitions import claim
from seqproc.worker.ownership.static import StaticOwnership
from tests.conftest import wait_for

pytestmark = pytest.mark.services


@pytest.fixture
def no_workers(clean: Settings, engine: Engine) -> Settings:
    """No heartbeat left by an earlier test (no worker process runs here)."""
    with engine.begin() as conn:
        conn.execute(delete(Worker))
    return clean


def alive(engine: Engine, owner: str, liveness_s: float) -> None:
    with engine.begin() as conn:
        beat(conn, owner, partitions="test", liveness_s=liveness_s)


def test_a_partition_has_a_live_owner_until_it_is_released_or_the_heartbeat_runs_out(
    no_workers: Settings, engine: Engine
) -> None:
    total = no_workers.partitions
    alive(engine, "a", 30)
    claim(engine, [0, 1], owner="a", total=total)
    alive(engine, "b", 0.5)
    claim(engine, [2], owner="b", total=total)
    alive(engine, "d", 30)
    claim(engine, [3], owner="d", total=total)
    claim(engine, [4], owner="never-beat", total=total)
    with engine.begin() as conn:
        conn.execute(delete(Partition).where(Partition.partition == 5))  # never claimed
        now = ownership(conn, range(6))
        assert live_workers(conn) == 3
    assert {p: (o.owner, o.state) for p, o in now.items()} == {
        0: ("a", "live"),
        1: ("a", "live"),
        2: ("b", "live"),
        3: ("d", "live"),
        4: (None, "gone"),  # no heartbeat at all: a worker from before heartbeats, or a row forgotten
    }
    assert release(engine, "a") == [0, 1]
    time.sleep(0.6)  # past b's heartbeat
    with engine.connect() as conn:
        now = ownership(conn, range(6))
        assert live_workers(conn) == 1  # a deleted its row on the way out; b's ran out
    assert {p: (o.owner, o.last_owner, o.state) for p, o in now.items()} == {
        0: (None, "a", "released"),
        1: (None, "a", "released"),
        2: (None, "b", "gone"),
        3: ("d", "d", "live"),
        4: (None, "never-beat", "gone"),
    }
    assert 0.5 < now[0].ownerless_s < 10  # type: ignore[operator]
    assert 0 < now[2].ownerless_s < 10  # type: ignore[operator]
    assert now[3].ownerless_s is None
    assert now[4].ownerless_s is None

    # As `seqproc status` shows it: only live owners, how long the others have had none, the live workers.
    snapshot = collect(engine, redis.Redis.from_url(no_workers.broker_url), total)
    entries = {e["partition"]: e for e in snapshot["partitions"]}
    assert [entries[p]["owner"] for p in range(6)] == [None, None, None, "d", None, None]
    assert [entries[p]["owner_state"] for p in range(6)] == ["released"] * 2 + ["gone", "live", "gone", "unclaimed"]
    assert [entries[p]["last_owner"] for p in range(6)] == ["a", "a", "b", "d", "never-beat", None]
    assert entries[0]["ownerless_s"] > 0.5
    assert entries[5]["ownerless_s"] is None
    assert (snapshot["totals"]["workers"], snapshot["totals"]["owners"]) == (1, 1)
    assert snapshot["totals"]["unowned"] == total - 1


def test_a_conditional_claim_takes_a_partition_only_from_the_owner_it_saw(
    no_workers: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    total = no_workers.partitions
    before = claim(engine, [6], owner="dead", total=total)[6]
    # Two waiting workers saw the same dead owner: the first takes the partition, the second leaves it alone.
    assert claim(engine, [6], owner="w1", total=total, seen={6: "dead"}) == {6: before + 1}
    assert claim(engine, [6], owner="w2", total=total, seen={6: "dead"}) == {}
    with engine.connect() as conn:
        assert conn.execute(select(Partition.owner, Partition.epoch).where(Partition.partition == 6)).one() == (
            "w1",
            before + 1,
        )
    # A takeover from a live worker is said, with whom it was taken from.
    alive(engine, "w1", 30)
    with caplog.at_level(logging.INFO, logger="seqproc.worker.ownership.partitions"):
        claim(engine, [6], owner="w3", total=total)
    assert "partitions 6: taken over from w1 (alive), which is still running" in caplog.text


def test_a_fixed_set_gives_up_a_partition_taken_over_and_resumes_it_once_the_taker_exits(
    no_workers: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    settings = no_workers.model_copy(update={"lease_s": 30})
    alive(engine, "static", 30)
    epochs = claim(engine, [7, 8], owner="static", total=settings.partitions)
    keeper = StaticOwnership(settings, engine, "static", [7, 8], epochs, spec="7-8")
    acquired: list[tuple[int, int]] = []
    lost: list[int] = []

    def tick() -> None:
        keeper.tick(on_acquire=lambda p, e: (acquired.append((p, e)), epochs.__setitem__(p, e)), on_lost=lost.append)

    tick()
    assert (acquired, lost) == ([], [])
    alive(engine, "taker", 30)
    taken = claim(engine, [7, 8], owner="taker", total=settings.partitions)
    with caplog.at_level(logging.ERROR, logger="seqproc.worker.ownership.static"):
        keeper._next_beat_s = 0  # due: the heartbeat tick compares the epochs
        tick()
    assert lost == [7, 8]
    assert epochs == {}
    assert "partition 7: taken over by taker (alive)" in caplog.text
    tick()  # the taker lives: nothing to resume
    assert acquired == []
    release(engine, "taker")
    tick()
    assert acquired == [(7, taken[7] + 1), (8, taken[8] + 1)]  # in order, fenced: the epoch rose once more
    assert epochs == {7: taken[7] + 1, 8: taken[8] + 1}
    with engine.connect() as conn:
        assert {p: o.owner for p, o in ownership(conn, [7, 8]).items()} == {7: "static", 8: "static"}
    # A heartbeat that runs out counts as an exit too.
    alive(engine, "short-lived", 0.3)
    claim(engine, [8], owner="short-lived", total=settings.partitions)
    keeper._next_beat_s = 0
    tick()
    assert lost[-1] == 8
    wait_for(lambda: (tick(), 8 in epochs)[1], 5, "the partition back once the taker's heartbeat ran out")
