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

So marks cost nothing on the send path (the acknowledged numbers are kept per partition, one dict entry per
message), one ``INFO`` a second per producer process while it sends, and one message per partition per failover.
A mark may come before events of its producer that are still on their way (a send under way when it was pushed):
those fill the gap it opened (not a loss), as a late message does.

Not covered: a failover within the first look after a process's first send (no replication id to compare with
yet), a process that exits or dies before its keeper's next look after the failover (nothing of it is left to
say where it stood), and a send that raised ``PublishError`` (its numbers are not in the mark: the caller was told
it may not have arrived).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from seqproc.models.errors import first_line
from seqproc.producer.sequence import Place, Sequencer

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Look:
    """Where the master's replication stream stood when the keeper last asked, with what had been acknowledged by
    then (the look is forgotten when the master changes)."""

    offset: int
    #: Per producer, per partition: the number after its last event acknowledged before the look.
    acked: dict[str, dict[int, int]] = field(default_factory=dict)


class MarkKeeper:
    """One per publisher (per settings, per process): watches its sequencers (the threaded publisher's and each event
    loop's) and marks their partitions after the broker's master changed. ``push`` sends marks: ``(partition,
    place)`` pairs, one message each, in one round trip (``Publisher.push_marks``)."""

    def __init__(
        self, client: redis.Redis, push: Callable[[Sequence[tuple[int, Place]]], None], *, interval_s: float
    ) -> None:
        self._client = client
        self._push = push
        self.interval_s = interval_s
        #: Weak references (an event loop's publisher goes with its loop), replaced whole when one is added: the
        #: thread reads them without a lock (a lock it held at a fork would stay held in the child).
        self._sequencers: tuple[weakref.ref[Sequencer], ...] = ()
        #: Per producer, per partition: the number after its last event known to be on a replica.
        self._safe: dict[str, dict[int, int]] = {}
        #: The master's replication id when the keeper last asked (None: never asked yet).
        self._replid: str | None = None
        self._look: _Look | None = None
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
                self._safe, self._replid, self._look = {}, None, None
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, name="seqproc-marks", daemon=True)
                self._thread.start()
            if all(ref() is not sequencer for ref in self._sequencers):
                self._sequencers = (*(ref for ref in self._sequencers if ref() is not None), weakref.ref(sequencer))

    @property
    def master_id(self) -> str | None:
        """The replication id of the master the keeper last asked (None: it has not asked yet): once it is the new
        master's, the marks a failover called for were pushed."""
        return self._replid

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
        """Ask the master once, if anything acknowledged is not known to be on a replica; mark every such partition
        if the master changed. Returns how many marks it pushed."""
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
            self._look = None
            return 0
        info = self._client.info("replication")
        if info.get("role") != "master":
            return 0  # a demoted server the client has not left yet: nothing to judge by
        replid = str(info["master_replid"])
        if replid != self._replid:
            first = self._replid is None
            self._look = None
            if not first:
                # Another master: what no replica of the old one had may be gone with it. The marks go to the new
                # one; they are safe once its replica has them (a look taken after them). Pushed before the new id
                # is kept: a push that fails is made again at the next look.
                marks = [(p, (producer, end)) for producer, ends in unsafe.items() for p, end in ends.items()]
                self._push(marks)
                self._replid = replid
                logger.warning(
                    "the broker's master changed (a failover, or a restart): %d partition(s) marked with where their "
                    "producers' acknowledged events end, so that the workers count any the old master took with it",
                    len(marks),
                )
                return len(marks)
            self._replid = replid
        look = self._look
        if look is not None and (_replicated(info) >= look.offset or _no_replica(info)):
            for producer, ends in look.acked.items():
                safe = self._safe.setdefault(producer, {})
                for partition, end in ends.items():
                    safe[partition] = max(safe.get(partition, 1), end)
            unsafe = {
                producer: ahead
                for producer, ends in unsafe.items()
                if (ahead := {p: end for p, end in ends.items() if end > self._safe.get(producer, {}).get(p, 1)})
            }
        self._look = _Look(int(info["master_repl_offset"]), unsafe) if unsafe else None
        return 0


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
