"""``seqproc relay``: send committed outbox events to their partition queues, and keep them until applied.

One pass (:meth:`Relay.tick`):

1. **Send.** In one transaction on the outbox's database, take the partitions whose advisory lock this relay gets
   (``pg_try_advisory_xact_lock``: two relays never send for the same partition at once, so neither can overtake
   the other's events of a key), read their unsent rows in id order, and push them as messages of many events
   (one per partition, split at ``max_events_per_message``) with a script that also counts the messages pushed onto
   the queue (``seqproc:relay:pushed:<outbox id>:<queue>``: one counter per outbox database, see
   :mod:`seqproc.worker.outbox_identity`), but only if that count is the one this relay recorded. Then mark the rows
   sent (with the number of their message) and commit.
2. **Forget what is applied** (:mod:`seqproc.worker.relay_forget`). Sent rows whose key the idempotency ledger
   holds are deleted, and so are those a worker dead-lettered (parked): the dead-letter store keeps them, and
   replay takes them from there; the others stay. A chunk of rows per pass, with a wrapping cursor, and about once
   a second while it finds nothing.

Order: a relay reads only committed rows and sends them in id order. Ids come from a sequence when the row is
written, so an event written after another transaction committed always has the larger id: per key, events are
applied in the order their transactions committed whenever one committed before the other wrote its event. Two
transactions in flight at the same time have no order between them (PostgreSQL tells none without logical
decoding); theirs is whichever the relay saw first, by id. The relay never reads "id > last seen" (a transaction
that commits late with a small id would be skipped); it reads what is unsent.

Loss: the push count lives in the broker's Redis beside the queue, written in the same atomic step as the push,
so a Redis that comes back without its last writes (a crash with ``appendfsync everysec``, a failover to a replica
that lagged, a flush) comes back with a lower count. Every pass reads the counts of all the partitions it locked
(one MGET), not only of those with new rows: where one is lower than recorded, the rows of the lost messages (their
number is above the count) become unsent again and are sent again, in order, before anything newer, even on a
partition that got nothing new since; the worker's ledger turns a copy of an event it applied into a duplicate. A
count higher than recorded means a relay pushed and died before its commit: those rows are still unsent here and
go again (duplicates, harmless).

Partition count: a relay starts only with the deployment's count (seqproc's database records it; the relay copies
it into the outbox database, where every insert checks it), and each pass reads that copy with its locks: after a
``seqproc partitions set`` the relay stops with :class:`PartitionCountMismatch` instead of sending for the old count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Connection, Engine, text

from seqproc.models.clients import wait_timeout_ms
from seqproc.models.envelope import envelope_of_json
from seqproc.models.errors import ConfigError, PartitionCountMismatch, first_line
from seqproc.models.partition_count import mismatch
from seqproc.models.pending import hold_args, index_entries
from seqproc.models.scripts import RELAY_PUSH_IF_COUNT
from seqproc.models.settings import Settings, mask_url
from seqproc.models.stamps import unique_id
from seqproc.models.wire import bell_key, queue_name, relay_pushed_key
from seqproc.worker import faults
from seqproc.worker.outbox_identity import adopt_counters, outbox_id
from seqproc.worker.ownership.partitions import publish_partition_count

# FORGET_* are read where they live, in relay_forget (set them there); named here too, as before the move.
from seqproc.worker.relay_forget import FORGET_CHUNK as FORGET_CHUNK
from seqproc.worker.relay_forget import FORGET_IDLE_S as FORGET_IDLE_S
from seqproc.worker.relay_forget import Forgetter

logger = logging.getLogger(__name__)

#: The advisory-lock namespace of the relays (the first key of ``pg_try_advisory_xact_lock(ns, partition)``).
LOCK_NAMESPACE = 0x5E9C
#: An idle relay's wait between passes doubles up to this many times ``relay_interval_ms``.
IDLE_BACKOFF = 5


_PENDING = text(
    """
    SELECT x.id, p.partition, x.body
    FROM unnest(CAST(:partitions AS integer[])) AS p(partition)
    CROSS JOIN LATERAL (
        SELECT o.id, o.body FROM seqproc_outbox o
        WHERE o.partition = p.partition AND o.push_seq IS NULL
        ORDER BY o.id LIMIT :per_partition
    ) AS x
    ORDER BY p.partition, x.id
    """
)
#: The partitions whose advisory lock this relay gets, each with the count of messages recorded for its queue (the
#: select list runs only for the rows the lock let through), and the deployment's partition count as the outbox
#: database holds it.
_LOCK = text(
    """
    SELECT p, (SELECT r.pushed FROM seqproc_outbox_relay r WHERE r.partition = p),
        (SELECT m.value FROM seqproc_outbox_meta m WHERE m.name = 'partition_count')
    FROM unnest(CAST(:partitions AS integer[])) AS p
    WHERE pg_try_advisory_xact_lock(:namespace, p)
    """
)
_RECORDED = text("SELECT partition, pushed FROM seqproc_outbox_relay")
_RECORD = text(
    """
    INSERT INTO seqproc_outbox_relay (partition, pushed)
    SELECT * FROM unnest(CAST(:partitions AS integer[]), CAST(:pushed AS bigint[]))
    ON CONFLICT (partition) DO UPDATE SET pushed = excluded.pushed
    """
)
_MARK_SENT = text(
    """
    UPDATE seqproc_outbox o SET push_seq = v.seq, sent_at = now()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[])) AS v(id, seq)
    WHERE o.id = v.id
    """
)
_LOST = text("SELECT id, ledger_key FROM seqproc_outbox WHERE partition = :partition AND push_seq > :count")
_RESEND = text(
    "UPDATE seqproc_outbox SET push_seq = NULL, sent_at = NULL WHERE partition = :partition AND push_seq > :count"
)


@dataclass
class PassResult:
    """What one pass did."""

    #: Events pushed (counting copies sent again after a loss).
    sent: int = 0
    messages: int = 0
    #: Events made unsent again because the broker lost their messages.
    resent: int = 0
    #: Rows deleted because their event was applied.
    forgotten: int = 0
    #: Some partition had more unsent rows than one pass takes (a backlog): the next pass goes at once.
    full: bool = False


#: How long a pass waits for a replica to acknowledge its pushes (``WAIT``), at most: it holds its transaction
#: (and the partitions' advisory locks) meanwhile.
RELAY_REPLICA_WAIT_S = 1.0
#: How often the relay asks whether the broker has a replica.
REPLICA_CHECK_S = 5.0


class Relay:
    """Sends the outbox of ``settings.outbox_url``; see the module docstring. Not thread-safe: one per thread."""

    def __init__(self, settings: Settings, outbox: Engine, ledger: Engine, client: redis.Redis) -> None:
        if outbox.dialect.name != "postgresql":
            raise ConfigError(
                f"SEQPROC_OUTBOX_DATABASE_URL: the relay needs PostgreSQL (got {mask_url(settings.outbox_url)})"
            )
        self.settings = settings
        self.outbox = outbox
        self.ledger = ledger
        self.client = client
        self._push = client.register_script(RELAY_PUSH_IF_COUNT)
        #: A Redis Cluster: each partition's push its own script call in its queue's slot, by EVAL (a cluster's
        #: pipeline cannot load a script a node lacks); no WAIT (it answers for one node's connection).
        self._cluster = isinstance(client, redis.RedisCluster)
        #: Whether the broker's primary has a replica (``INFO replication``), and until when that answer holds.
        self._replicas = (False, 0.0)
        self.partitions = list(range(settings.partitions))
        self.forgetter = Forgetter(outbox, ledger)
        # The deployment's count, checked and copied where the outbox writers and the producers check theirs.
        count = publish_partition_count(ledger, settings.partitions, client=client, outbox=outbox)
        if count != settings.partitions:
            raise mismatch(settings.partitions, count, where="this database")
        #: This outbox database's id: the broker's push counters of its relays are keyed by it.
        self.outbox_id = outbox_id(outbox)
        with outbox.connect() as conn:
            recorded = {int(p): int(n) for p, n in conn.execute(_RECORDED)}
        adopted = adopt_counters(client, self.outbox_id, recorded)
        if adopted:
            logger.info(
                "outbox %s: took the shared push counters of partitions %s (from before counters were per outbox)",
                self.outbox_id,
                ",".join(map(str, adopted)),
            )

    # -- one pass ----------------------------------------------------------------------------------------------
    def tick(self) -> PassResult:
        result = PassResult()
        self._send(result)
        result.forgotten += self.forgetter.scan()
        return result

    def _send(self, result: PassResult) -> None:
        per_partition = max(1, self.settings.relay_batch_size // max(1, len(self.partitions)))
        with self.outbox.begin() as conn:
            recorded: dict[int, int] = {}
            for p, n, count in conn.execute(_LOCK, {"partitions": self.partitions, "namespace": LOCK_NAMESPACE}):
                if count is not None and int(count) != self.settings.partitions:
                    raise mismatch(self.settings.partitions, count, where="the outbox database")
                recorded[int(p)] = int(n or 0)
            if not recorded:
                return
            self._check_counts(conn, recorded, result)
            pending = conn.execute(_PENDING, {"partitions": list(recorded), "per_partition": per_partition}).all()
            if not pending:
                return
            by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
            for row_id, partition, body in pending:
                by_partition[int(partition)].append((int(row_id), body))
            result.full = any(len(rows) >= per_partition for rows in by_partition.values())
            replies = self._push_all(by_partition, recorded)
            faults.relay_pushed_delay()
            ids: list[int] = []
            seqs: list[int] = []
            pushed: dict[int, int] = {}
            for partition, (messages, (ok, count)) in replies.items():
                expected = recorded[partition]
                if ok:
                    for number, rows in enumerate(messages, start=expected + 1):
                        ids.extend(row_id for row_id, _ in rows)
                        seqs.extend([number] * len(rows))
                        result.sent += len(rows)
                    result.messages += len(messages)
                elif count > expected:
                    # A relay pushed these (or others) and died before it committed: they are unsent here and go
                    # again next pass, as duplicates the ledger will recognise.
                    logger.warning(
                        "partition %d: the broker counts %d message(s) pushed, %d recorded: a relay died after "
                        "pushing; its events go again",
                        partition,
                        count,
                        expected,
                    )
                else:
                    self._resend(conn, partition, count, expected, result)
                pushed[partition] = count
            if ids:
                conn.execute(_MARK_SENT, {"ids": ids, "seqs": seqs})
            conn.execute(_RECORD, {"partitions": list(pushed), "pushed": list(pushed.values())})

    def _check_counts(self, conn: Connection, recorded: dict[int, int], result: PassResult) -> None:
        """Compare the broker's push count of every partition locked with the recorded one (one MGET), whether or
        not the partition has anything new to send: a broker that lost the last messages of a partition that then
        went quiet must get them again all the same. Lowers ``recorded`` where the broker's count went back."""
        partitions = [p for p, n in recorded.items() if n]
        if not partitions:
            return
        keys = [relay_pushed_key(self.outbox_id, queue_name(p)) for p in partitions]
        # (Each counter is in its queue's slot: on a cluster, one GET per node's keys, pipelined.)
        client: Any = self.client
        counts = client.mget_nonatomic(keys) if self._cluster else client.mget(keys)
        lost = {p: int(c or 0) for p, c in zip(partitions, counts, strict=True) if int(c or 0) < recorded[p]}
        for partition, count in lost.items():
            self._resend(conn, partition, count, recorded[partition], result)
            recorded[partition] = count
        if lost:
            conn.execute(_RECORD, {"partitions": list(lost), "pushed": list(lost.values())})

    def _resend(self, conn: Connection, partition: int, count: int, expected: int, result: PassResult) -> None:
        """The broker counts ``count`` messages pushed onto the partition's queue, ``expected`` were recorded: the
        events of the messages above ``count`` become unsent, to go again before anything newer; those a worker is
        done with (:meth:`Forgetter.done`) are forgotten instead: a parked event sent again would be dead-lettered
        twice."""
        lost = conn.execute(_LOST, {"partition": partition, "count": count}).all()
        done_keys = self.forgetter.done([key for _, key in lost])
        done = [int(row_id) for row_id, key in lost if key in done_keys]
        if done:
            result.forgotten += self.forgetter.forget(conn, done)
        resent = conn.execute(_RESEND, {"partition": partition, "count": count}).rowcount
        result.resent += resent
        logger.warning(
            "partition %d: the broker lost %d message(s) (it counts %d pushed, %d recorded); %d event(s) "
            "not applied yet go again, in order; %d applied or dead-lettered forgotten",
            partition,
            expected - count,
            count,
            expected,
            resent,
            len(done),
        )

    def _push_all(
        self, by_partition: dict[int, list[tuple[int, str]]], recorded: dict[int, int]
    ) -> dict[int, tuple[list[list[tuple[int, str]]], tuple[bool, int]]]:
        """Push each partition's rows as messages, every partition in one pipelined round trip; the replies of the
        partitions the broker did not refuse."""
        limit = self.settings.max_events_per_message
        plan: dict[int, list[list[tuple[int, str]]]] = {}
        pipe: Any = self.client.pipeline(transaction=False)
        for partition, rows in by_partition.items():
            messages = [rows[start : start + limit] for start in range(0, len(rows), limit)]
            plan[partition] = messages
            queue = queue_name(partition)
            bodies = [
                envelope_of_json(
                    queue, partition, "[" + ",".join(body for _, body in rows) + "]", len(rows), task_id=unique_id()
                )
                for rows in messages
            ]
            pending_keys, pending_args = hold_args(self.settings.pending_ttl_s, index_entries(queue, rows))
            keys = [relay_pushed_key(self.outbox_id, queue), queue, bell_key(queue), *pending_keys]
            args = [int(recorded.get(partition, 0)), len(bodies), *bodies, *pending_args]
            if self._cluster:
                pipe.execute_command("EVAL", RELAY_PUSH_IF_COUNT, len(keys), *keys, *args)
            else:
                self._push(keys=keys, args=args, client=pipe)
        # With a replica, the pushes are recorded sent once it has them too (durability ``replica``): a failover
        # then loses none of them. Without an acknowledgement in time they are recorded all the same: the push
        # counters show what a failover lost, and those go again (see the module docstring).
        waiting = not self._cluster and self._has_replica()
        if waiting:
            pipe.wait(1, wait_timeout_ms(RELAY_REPLICA_WAIT_S))
        # One partition's error (a queue key of the wrong type, a full Redis refusing writes) must not hold back the
        # others: its rows stay unsent, for the next pass; the rest are pushed and recorded.
        replies = pipe.execute(raise_on_error=False)
        if waiting:
            acked = replies.pop()
            if isinstance(acked, Exception) or int(acked) < 1:
                logger.warning(
                    "no replica acknowledged the pushes of partitions %s within %g s; a failover now would lose "
                    "them, and the push counters would send them again",
                    ",".join(map(str, plan)),
                    RELAY_REPLICA_WAIT_S,
                )
        pushed: dict[int, tuple[list[list[tuple[int, str]]], tuple[bool, int]]] = {}
        for partition, reply in zip(plan, replies, strict=True):
            if isinstance(reply, Exception):
                logger.warning(
                    "partition %d: the broker refused the push of %d event(s) (%s); they stay unsent, for the next "
                    "pass",
                    partition,
                    len(by_partition[partition]),
                    first_line(reply),
                )
                continue
            pushed[partition] = (plan[partition], (bool(int(reply[0])), int(reply[1])))
        return pushed

    def _has_replica(self) -> bool:
        """The broker's primary has a replica connected (asked again every ``REPLICA_CHECK_S``)."""
        known, until = self._replicas
        now = time.monotonic()
        if now < until:
            return known
        try:
            known = int(self.client.info("replication").get("connected_slaves", 0)) > 0
        except redis.RedisError as error:
            logger.warning("could not ask the broker for its replicas: %s", first_line(error))
            known = False
        self._replicas = (known, now + REPLICA_CHECK_S)
        return known

    # -- the process -------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set: again at once after a pass that left a backlog (it took as many rows
        of a partition as one pass takes) or sent events again after a loss; after a pass that sent less, wait
        ``relay_interval_ms``, so that the next pass carries what was committed meanwhile in one message per
        partition (under a steady trickle of one-event transactions, a web server's, a pass per event would cost a
        transaction, a push and a worker's fetch per event); after a pass that found nothing, the same wait, doubled
        after each such pass up to ``IDLE_BACKOFF`` times it (an idle relay looks a few times a second, not fifty),
        and back to ``relay_interval_ms`` on any activity. A database or broker error is logged and tried again with
        capped backoff."""
        interval_s = self.settings.relay_interval_ms / 1000.0
        idle_s = pause_s = interval_s
        while not stop.is_set():
            try:
                result = self.tick()
            except PartitionCountMismatch:
                raise  # `seqproc partitions set` ran: this relay's count is not the deployment's any more
            except Exception as error:
                logger.warning("relay pass failed (%s); trying again in %.2f s", first_line(error), pause_s)
                stop.wait(pause_s)
                pause_s = min(max(pause_s * 2, 0.05), self.settings.retry_backoff_max_s)
                continue
            pause_s = interval_s
            if result.sent or result.resent or result.forgotten:
                idle_s = interval_s
            if result.sent or result.resent:
                logger.debug(
                    "relay: sent %d event(s) in %d message(s); %d to send again; forgot %d",
                    result.sent,
                    result.messages,
                    result.resent,
                    result.forgotten,
                )
                if not (result.full or result.resent):
                    stop.wait(interval_s)
                continue
            stop.wait(idle_s)
            idle_s = min(idle_s * 2, interval_s * IDLE_BACKOFF)
