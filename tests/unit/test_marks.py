"""The producer's sequence marks (``producer.marks``) against a scripted broker: when the keeper asks the master,
when it counts a partition's events safe (on a replica, or no replica to wait for), and what it marks after the
master changed; on a scripted cluster, per shard. The marks' effect on a worker is proven against real servers
(``tests/faults/test_restarts.py``, ``tests/faults/test_sentinel.py``, ``tests/faults/test_cluster.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from seqproc.producer.marks import MarkKeeper, OneMaster
from seqproc.producer.sequence import Place, Sequencer


class Broker:
    """``INFO replication`` as a master answers it: its replication id and offset, and its replicas' offsets."""

    def __init__(self) -> None:
        self.replid = "a" * 40
        self.offset = 100
        self.replicas: list[int] = [100]
        self.role = "master"
        self.asked = 0

    def info(self, section: str) -> dict[str, Any]:
        assert section == "replication"
        self.asked += 1
        info: dict[str, Any] = {
            "role": self.role,
            "connected_slaves": len(self.replicas),
            "master_replid": self.replid,
            "master_repl_offset": self.offset,
        }
        for n, offset in enumerate(self.replicas):
            info[f"slave{n}"] = {"ip": "127.0.0.1", "port": 7000 + n, "state": "online", "offset": offset, "lag": 0}
        return info


def keeper_of(broker: Broker) -> tuple[MarkKeeper, Sequencer, list[tuple[int, Place]]]:
    pushed: list[tuple[int, Place]] = []

    def push(marks: Sequence[tuple[int, Place]]) -> None:
        pushed.extend(marks)

    keeper = MarkKeeper(OneMaster(broker), push, interval_s=3600)  # looks made by hand
    return keeper, Sequencer(on_new_producer=keeper.watch), pushed


def send(sequencer: Sequencer, partition: int, count: int) -> None:
    messages: list[tuple[int, Sequence[Any]]] = [(partition, ["e"] * count)]
    sequencer.sent(messages, sequencer.number(messages))


def test_an_idle_producer_costs_no_round_trip_and_the_first_look_marks_nothing() -> None:
    broker = Broker()
    keeper, sequencer, pushed = keeper_of(broker)
    assert keeper.look() == 0
    assert broker.asked == 0  # nothing sent: nothing to ask about
    send(sequencer, 3, 5)
    assert keeper.look() == 0  # notes the master's id: nothing to compare with yet
    assert broker.asked == 1
    assert pushed == []


def test_events_on_a_replica_need_no_mark_and_the_rest_are_marked_after_a_failover() -> None:
    broker = Broker()
    keeper, sequencer, pushed = keeper_of(broker)
    send(sequencer, 3, 5)  # events 1-5 of partition 3
    keeper.look()  # the look: master at offset 100
    broker.offset, broker.replicas = 200, [150]  # the replica has not reached the look's offset yet...
    keeper.look()
    broker.replicas = [200]  # ... now it has passed the first look's: 1-5 are on it
    keeper.look()
    send(sequencer, 4, 2)  # events 1-2 of partition 4: never confirmed
    broker.offset = 300
    keeper.look()
    asked = broker.asked
    broker.replid, broker.offset = "b" * 40, 0  # a failover: the replica promoted
    assert keeper.look() == 1
    assert pushed == [(4, (sequencer.producer, 3))]  # partition 3's events were on the replica
    assert broker.asked == asked + 1


def test_with_no_replica_nothing_is_waited_for_but_a_restart_is_marked() -> None:
    broker = Broker()
    broker.replicas = []
    keeper, sequencer, pushed = keeper_of(broker)
    send(sequencer, 1, 3)
    keeper.look()
    keeper.look()  # no replica to wait for: safe as far as a failover goes
    asked = broker.asked
    assert keeper.look() == 0
    assert broker.asked == asked  # idle again: no more round trips
    send(sequencer, 1, 2)  # 4-5
    broker.replid = "c" * 40  # a restart (a new replication id), seen at the next look
    assert keeper.look() == 1
    assert pushed == [(1, (sequencer.producer, 6))]


def test_a_demoted_master_is_not_judged_and_a_failed_send_is_not_in_the_mark() -> None:
    broker = Broker()
    keeper, sequencer, pushed = keeper_of(broker)
    send(sequencer, 2, 4)  # 1-4 acknowledged
    failed: list[tuple[int, Sequence[Any]]] = [(2, ["e"])]
    sequencer.number(failed)  # 5: raised PublishError, maybe sent: kept, not acknowledged
    keeper.look()
    broker.role = "slave"  # the client still on the old master, demoted
    broker.replid = "d" * 40
    assert keeper.look() == 0
    broker.role = "master"
    assert keeper.look() == 1
    assert pushed == [(2, (sequencer.producer, 5))]


def test_a_send_given_back_moves_no_mark() -> None:
    sequencer = Sequencer()
    messages: list[tuple[int, Sequence[Any]]] = [(0, ["a", "b"])]
    places = sequencer.number(messages)
    sequencer.give_back(messages, places)  # not sent at all
    assert sequencer.acked() == (sequencer.producer, {})
    sequencer.sent(messages, sequencer.number(messages))
    assert sequencer.acked() == (sequencer.producer, {0: 3})


def test_marks_that_could_not_be_pushed_are_pushed_at_the_next_look() -> None:
    broker = Broker()
    attempts: list[list[tuple[int, Place]]] = []

    def push(marks: Sequence[tuple[int, Place]]) -> None:
        attempts.append(list(marks))
        if len(attempts) == 1:
            raise ConnectionError("the new master is not writable yet")

    keeper = MarkKeeper(OneMaster(broker), push, interval_s=3600)
    sequencer = Sequencer(on_new_producer=keeper.watch)
    send(sequencer, 5, 1)
    keeper.look()
    broker.replid = "e" * 40
    with pytest.raises(ConnectionError):
        keeper.look()
    assert keeper.look() == 1
    assert attempts == [[(5, (sequencer.producer, 2))]] * 2


class Shards:
    """A scripted Redis Cluster (:class:`~seqproc.producer.marks.Masters`): primaries by name, each a
    :class:`Broker`, and which partitions each holds; ``down``: primaries that do not answer."""

    def __init__(self, holds: dict[str, list[int]]) -> None:
        self.brokers = {name: Broker() for name in holds}
        for n, broker in enumerate(self.brokers.values()):
            broker.replid = str(n) * 40
        self.holds = holds
        self.down: set[str] = set()
        self.refreshed = 0

    def layout(self, partitions: Sequence[int]) -> list[tuple[Any, list[int]]]:
        return [(name, [p for p in partitions if p in held]) for name, held in self.holds.items()]

    def info(self, master: Any) -> dict[str, Any]:
        if master in self.down:
            raise ConnectionError(f"{master} is down")
        return self.brokers[master].info("replication")

    def refresh(self) -> None:
        self.refreshed += 1

    def fail_over(self, old: str, new: str) -> None:
        """``old``'s replica promoted as ``new``: a new replication id, the same partitions."""
        self.brokers[new] = Broker()
        self.brokers[new].replid = new * 40
        self.holds[new] = self.holds.pop(old)


def test_on_a_cluster_each_primary_is_followed_and_only_the_failed_over_ones_partitions_are_marked() -> None:
    shards = Shards({"a": [1, 2], "b": [3], "c": [4]})
    for broker in shards.brokers.values():
        broker.replicas = [50]  # behind: nothing is known to be on a replica
    pushed: list[tuple[int, Place]] = []
    keeper = MarkKeeper(shards, pushed.extend, interval_s=3600)
    sequencer = Sequencer(on_new_producer=keeper.watch)
    send(sequencer, 1, 2)  # on a
    send(sequencer, 3, 4)  # on b
    assert keeper.look() == 0  # the first look notes every primary's id (c's too: it holds none of ours yet)
    assert all(keeper.knows(broker.replid) for broker in shards.brokers.values())
    send(sequencer, 4, 1)  # on c, first sent to after that look: c's id is known, nothing to mark
    assert keeper.look() == 0
    shards.down.add("a")  # a dies: its partitions cannot be judged until the slot map says where they went...
    with pytest.raises(ConnectionError):
        keeper.look()
    assert shards.refreshed == 1  # ... so the map is read again
    assert pushed == []
    shards.fail_over("a", "a2")  # its replica promoted: a primary the keeper never saw holds partitions 1 and 2
    assert keeper.look() == 1
    assert pushed == [(1, (sequencer.producer, 3))]  # 2 had nothing sent: only a's partitions sent to are marked
    assert keeper.knows("a2" * 40)
    pushed.clear()
    assert keeper.look() == 0  # marked once


def test_on_a_cluster_a_shard_whose_replica_has_the_events_needs_no_mark() -> None:
    shards = Shards({"a": [1], "b": [2]})
    pushed: list[tuple[int, Place]] = []
    keeper = MarkKeeper(shards, pushed.extend, interval_s=3600)
    sequencer = Sequencer(on_new_producer=keeper.watch)
    for broker in shards.brokers.values():
        broker.replicas = [50]  # behind its primary's offset (100)
    send(sequencer, 1, 3)
    send(sequencer, 2, 3)
    keeper.look()
    shards.brokers["b"].replicas = [100]  # b's replica reached the look's offset; a's has not
    keeper.look()  # b: 1-3 of partition 2 safe
    shards.fail_over("a", "a2")
    shards.fail_over("b", "b2")
    assert keeper.look() == 1
    assert pushed == [(1, (sequencer.producer, 4))]
