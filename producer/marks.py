"""Sequence marks: how a producer's last events, lost in a broker failover with no later message behind them, are
detected all the same.

A worker detects lost events by a gap: a later message of the same producer starts past the number it expects
(``seqproc.producer.sequence``). A producer that stops sending to a partition (idle, or done) right after a
failover leaves no later message, and the tail the old master took with it would go unseen. A *mark* is that later
message: one with no event, ``"seq": [producer, n]``, saying the producer's acknowledged events of the partition end
before ``n``. The worker's check treats it as any message (``seqproc.worker.engine.sequence``): numbers before ``n``
it never saw are a gap, declared lost after ``SEQPROC_LOSS_GRACE_S``.

When to send one. Redis replicates in order: a mark pushed to a master before the failover can only survive it if
every push before it survived too, so it must go to the *new* master, after the failover. Each producer process
keeps one thread (:class:`MarkKeeper`) that, every ``SEQPROC_SEQUENCE_MARK_S`` while some acknowledged events are
not yet known to be on a replica, asks the master (``INFO replication``, one round trip, no write):

- the master's replication id changed since it last asked (a failover promoted another server, or it restarted):
  it pushes one mark per partition whose events were not known to be on a replica, to the new master;
- a replica has acknowledged the offset the master had when it last asked (or the master has no replica: nothing
  to wait for): the events acknowledged before then are safe from a failover, and need no mark.

On a Redis Cluster each shard has a master of its own, with its own replication id and offsets: the keeper asks
every primary of the slot map (:class:`ClusterMasters`), judges each partition by the primary that holds its
queue's slot, and after a primary's failover marks that primary's partitions only, on the replica promoted in its
place. A partition found on a master whose id the keeper has never seen changed masters since its last look: a
promotion and a restart without data both make a new id (a slot migrated to a primary it knows moves the events
with it: nothing to mark).

So marks cost nothing on the send path (the acknowledged numbers are kept per partition, one dict entry per
message), one ``INFO`` a second per master per producer process while it sends, and one message per partition per
failover.
A mark may come before events of its producer that are still on their way (a send under way when it was pushed):
those fill the gap it opened (not a loss), as a late message does.

Not covered: a failover within the first look after a process's first send (no replication id to compare with
yet), a process that exits or dies before its keeper's next look after the failover (nothing of it is left to
say where it stood), a send that raised ``PublishError`` (its numbers are not in the mark: the caller was told
it may not have arrived), and on a cluster a slot migrated whose new primary fails before its replica copied the
migrated keys while the producer's slot map still names the old primary (its events are judged by the old one's
replica).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from seqproc.models.errors import first_line
from seqproc.models.wire import queue_name
from seqproc.producer.sequence import Place, Sequencer

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Look:
    """Where one master's replication stream stood when the keeper last asked it, with what had been acknowledged on
    its partitions by then (forgotten when the master is no longer asked)."""

    offset: int
    #: Per producer, per partition: the number after its last event acknowledged before the look.
    acked: dict[str, dict[int, int]] = field(default_factory=dict)


class Masters(Protocol):
    """The masters a producer's partitions live on, and how to ask each: one (one Redis, Sentinel's master) or one
    per shard (a Redis Cluster's primaries, :class:`ClusterMasters`)."""

    def layout(self, partitions: Sequence[int]) -> list[tuple[Any, list[int]]]:
        """Every master, each with those of ``partitions`` it holds now (as far as the client knows)."""
        ...

    def info(self, master: Any) -> dict[str, Any]:
        """``INFO replication`` of ``master``."""
        ...

    def refresh(self) -> None:
        """Learn again where the partitions live (a master did not answer, or is one no more)."""
        ...


class OneMaster:
    """The one master of a Redis or a Sentinel deployment (the client asks the sentinels as it connects)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def layout(self, partitions: Sequence[int]) -> list[tuple[Any, list[int]]]:
        return [(self._client, list(partitions))]

    def info(self, master: Any) -> dict[str, Any]:
        return dict(master.info("replication"))

    def refresh(self) -> None:
        """Nothing to learn: the client finds the master as it connects."""


class ClusterMasters:
    """A Redis Cluster's primaries, through redis-py's cluster client (its slot map: each partition lives where its
    queue's slot does). Each primary is asked on its own (one attempt, no retry: a node that does not answer is
    asked again at the next look, after the slot map was read again)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def layout(self, partitions: Sequence[int]) -> list[tuple[Any, list[int]]]:
        by_node: dict[str, tuple[Any, list[int]]] = {node.name: (node, []) for node in self._client.get_primaries()}
        for partition in partitions:
            node = self._client.get_node_from_key(queue_name(partition))
            by_node.setdefault(node.name, (node, []))[1].append(partition)
        return list(by_node.values())

    def info(self, master: Any) -> dict[str, Any]:
        return dict(self._client.info("replication", target_nodes=master))

    def refresh(self) -> None:
        try:
            self._client.nodes_manager.initialize()
        except redis.RedisError as error:  # every node away (mid-failover): the next look tries again
            logger.debug("sequence marks: could not read the cluster's slot map: %s", first_line(error))


class MarkKeeper:
    """One per publisher (per settings, per process): watches its sequencers (the threaded publisher's and each event
    loop's) and marks their partitions after the master that holds them changed. ``masters``: :class:`OneMaster` of
    the broker's client, or :class:`ClusterMasters`. ``push`` sends marks: ``(partition, place)`` pairs, one message
    each (``Publisher.push_marks``)."""

    def __init__(
        self, masters: Masters, push: Callable[[Sequence[tuple[int, Place]]], None], *, interval_s: float
    ) -> None:
        self._masters = masters
        self._push = push
        self.interval_s = interval_s
        #: Weak references (an event loop's publisher goes with its loop), replaced whole when one is added: the
        #: thread reads them without a lock (a lock it held at a fork would stay held in the child).
        self._sequencers: tuple[weakref.ref[Sequencer], ...] = ()
        #: Per producer, per partition: the number after its last event known to be on a replica.
        self._safe: dict[str, dict[int, int]] = {}
        #: The replication ids of every master the keeper has asked (empty: it never asked yet). Redis gives a
        #: promoted replica, and a master restarted without its data, a new one: a partition found on a master whose
        #: id is not here changed masters since the keeper last looked.
        self._known: set[str] = set()
        #: Per master (by replication id), the keeper's last look at it.
        self._looks: dict[str, _Look] = {}
        self._lock = threading.Lock()
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing = False

    def watch(self, sequencer: Sequencer) -> None:
        """Keep the marks of ``sequencer`` from now on (its new producer: again after a fork), and run the thread."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: its sequencers number as new producers; nothing of the parent's applies.
                self._pid = os.getpid()
                self._sequencers = ()
                self._safe, self._known, self._looks = {}, set(), {}
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, name="seqproc-marks", daemon=True)
                self._thread.start()
            if all(ref() is not sequencer for ref in self._sequencers):
                self._sequencers = (*(ref for ref in self._sequencers if ref() is not None), weakref.ref(sequencer))

    def knows(self, replid: str) -> bool:
        """Whether the keeper has asked the master of replication id ``replid``: once it has asked a new master, the
        marks a failover called for on its partitions were pushed."""
        return replid in self._known

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval_s):
            try:
                self.look()
            except Exception as error:  # the broker away (a failover under way): the next look tries again
                if not self._failing:
                    logger.info(
                        "sequence marks: cannot ask the broker (%s: %s); trying again every %g s",
                        type(error).__name__,
                        first_line(error),
                        self.interval_s,
                    )
                self._failing = True
            else:
                self._failing = False

    def look(self) -> int:
        """Ask each master once, if anything acknowledged is not known to be on a replica; mark every such partition
        whose master changed. Returns how many marks it pushed. A master that cannot be asked leaves its partitions
        for the next look; the first error met is raised once every other master was looked at."""
        unsafe: dict[str, dict[int, int]] = {}
        for ref in self._sequencers:
            sequencer = ref()
            if sequencer is None:
                continue
            producer, acked = sequencer.acked()
            safe = self._safe.get(producer, {})
            ahead = {partition: end for partition, end in acked.items() if end > safe.get(partition, 1)}
            if ahead:
                unsafe[producer] = ahead
        if not unsafe:
            self._looks.clear()
            return 0
        partitions = sorted({partition for ends in unsafe.values() for partition in ends})
        first = not self._known
        seen: set[str] = set()
        looks: dict[str, _Look] = {}
        marked = 0
        failed: Exception | None = None
        for master, held in self._masters.layout(partitions):
            try:
                marked += self._look_at(master, held, unsafe, first=first, seen=seen, looks=looks)
            except Exception as error:
                self._masters.refresh()
                failed = failed or error
        self._known |= seen
        self._looks = looks
        if failed is not None and not marked:
            raise failed
        return marked

    def _look_at(
        self,
        master: Any,
        held: list[int],
        unsafe: dict[str, dict[int, int]],
        *,
        first: bool,
        seen: set[str],
        looks: dict[str, _Look],
    ) -> int:
        """One master's look (see :meth:`look`): ``held``, the unsafe partitions it holds; what it learns goes into
        ``seen`` and ``looks``."""
        info = self._masters.info(master)
        if info.get("role") != "master":
            self._masters.refresh()  # a demoted server the client has not left yet: nothing to judge by
            return 0
        replid = str(info["master_replid"])
        mine = {
            producer: ahead for producer, ends in unsafe.items() if (ahead := {p: ends[p] for p in held if p in ends})
        }
        pushed = 0
        if replid not in self._known and not first and mine:
            # Another master: what no replica of the old one had may be gone with it. The marks go to the new one;
            # they are safe once its replica has them (a look taken after them). Pushed before the new id is kept: a
            # push that fails is made again at the next look.
            marks = [(p, (producer, end)) for producer, ends in mine.items() for p, end in ends.items()]
            self._push(marks)
            pushed = len(marks)
            logger.warning(
                "the broker's master of %d partition(s) changed (a failover, or a restart): marked with where their "
                "producers' acknowledged events end, so that the workers count any the old master took with it",
                pushed,
            )
        seen.add(replid)
        look = self._looks.get(replid)
        if look is not None and (_replicated(info) >= look.offset or _no_replica(info)):
            for producer, ends in look.acked.items():
                safe = self._safe.setdefault(producer, {})
                for partition, end in ends.items():
                    if partition in held:  # (one that moved to another master since is judged there)
                        safe[partition] = max(safe.get(partition, 1), end)
            mine = {
                producer: ahead
                for producer, ends in mine.items()
                if (ahead := {p: end for p, end in ends.items() if end > self._safe.get(producer, {}).get(p, 1)})
            }
        if mine:
            looks[replid] = _Look(int(info["master_repl_offset"]), mine)
        return pushed


def _replicated(info: dict[str, Any]) -> int:
    """The highest offset an online replica has acknowledged (``INFO replication`` on the master), -1 if none."""
    offsets = [
        int(value.get("offset", -1))
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    ]
    return max(offsets, default=-1)


def _no_replica(info: dict[str, Any]) -> bool:
    """A master with no replica: no failover can promote another server (a restart shows as a new id)."""
    return int(info.get("connected_slaves", 0)) == 0
