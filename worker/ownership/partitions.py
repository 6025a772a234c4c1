"""Partition ownership: parse ``--partitions``, claim partitions (raising their fencing epochs), and hand a dead
owner's unacknowledged messages back to the queue at once instead of after the visibility timeout."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
import redis
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError

from seqproc.models.db import upsert
from seqproc.models.errors import ConfigError
from seqproc.models.partition_count import mismatch
from seqproc.models.scripts import RESTORE_LEGACY_HELD
from seqproc.models.tables.base import table_of
from seqproc.models.tables.partition import Meta, Partition
from seqproc.models.wire import (
    LEGACY_UNACKED_INDEX_KEY,
    LEGACY_UNACKED_KEY,
    PARTITION_COUNT_KEY,
    PRODUCER_CLIENT_NAME,
    bell_key,
    queue_name,
    unacked_index_key,
    unacked_key,
)
from seqproc.worker.ops.lag import outbox_depth
from seqproc.worker.outbox_identity import record_outbox_partition_count
from seqproc.worker.ownership.liveness import Ownership, ownership

logger = logging.getLogger(__name__)

PARTITIONS = table_of(Partition)
META = table_of(Meta)
PARTITION_COUNT = "partition_count"


def parse_partitions(spec: str | None, total: int) -> list[int]:
    """``"0-7"``, ``"0,2,5-6"`` or ``"all"``/None -> sorted partition numbers, each below ``total``."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(total))
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low_text, high_text = part.split("-", 1)
                low, high = int(low_text), int(high_text)
                if low > high:
                    raise ValueError
                chosen.update(range(low, high + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise ConfigError(
                f"--partitions: {part!r} is not a partition number or range like 0-7 (spec {spec!r})"
            ) from None
    bad = sorted(p for p in chosen if not 0 <= p < total)
    if bad:
        raise ConfigError(f"--partitions: {bad[0]} is out of range; partitions are 0-{total - 1} (SEQPROC_PARTITIONS)")
    return sorted(chosen)


def check_partition_count(engine: Engine, total: int) -> None:
    """Record the partition count on first use; refuse a different one later (it would re-route keys)."""
    with engine.begin() as conn:
        stored = _record_first(conn, total)
    if stored != total:
        raise mismatch(total, stored, where="this database")


def require_partition_count(engine: Engine, total: int) -> None:
    """Refuse ``total`` if the database records another count; record nothing (for readers: ``seqproc status``)."""
    with engine.connect() as conn:
        stored = conn.execute(select(META.c.value).where(META.c.name == PARTITION_COUNT)).scalar_one_or_none()
    if stored is not None and int(stored) != total:
        raise mismatch(total, stored, where="this database")


def publish_partition_count(engine: Engine, total: int, *, client: Any = None, outbox: Engine | None = None) -> int:
    """Copy the database's count (``total`` recorded first if it has none) to where the other processes read it: the
    broker (``client``: the producers read it when they connect) and the outbox database (``outbox``: the outbox
    writers' insert checks it). Returns the count. The record's row stays locked meanwhile, so that a concurrent
    ``seqproc partitions set`` cannot be overwritten by the count it replaced."""
    with engine.begin() as conn:
        count = _record_first(conn, total, lock=True)
        if outbox is not None:
            record_outbox_partition_count(outbox, count, conn=conn if outbox is engine else None)
        if client is not None:
            client.set(PARTITION_COUNT_KEY, count)
    return count


def _record_first(conn: Connection, total: int, *, lock: bool = False) -> int:
    """The recorded count, ``total`` recorded first if there is none."""
    conn.execute(
        upsert(conn, META).on_conflict_do_nothing(index_elements=[META.c.name]),
        {"name": PARTITION_COUNT, "value": str(total)},
    )
    query = select(META.c.value).where(META.c.name == PARTITION_COUNT)
    return int(conn.execute(query.with_for_update(read=True) if lock else query).scalar_one())


def session_name(owner: str) -> str:
    """The PostgreSQL ``application_name`` of a worker's sessions: ``seqproc <pid>/<run token>``, the tail of its
    owner token (unique per run, and short enough for the 63 characters PostgreSQL keeps), so that the next owner
    of a partition can find the sessions of the previous one."""
    return "seqproc " + "/".join(owner.split("/")[-2:])


def is_lock_timeout(error: BaseException) -> bool:
    """A statement gave up waiting for a lock after ``lock_timeout``."""
    return isinstance(getattr(error, "orig", None), psycopg.errors.LockNotAvailable)


def claim(
    engine: Engine,
    partitions: Sequence[int],
    *,
    owner: str,
    total: int,
    lock_timeout_s: float | None = None,
    seen: Mapping[int, str | None] | None = None,
) -> dict[int, int]:
    """Take ``partitions``: raise each one's epoch, so that any previous owner can no longer commit.

    Returns partition -> the new epoch, which every apply transaction of this owner checks. ``lock_timeout_s``
    bounds the wait for a previous owner's transaction to end (PostgreSQL). A takeover that times out ends that
    owner's stale sessions (:func:`end_stale_sessions`) and tries once more; failing again it raises, to be retried,
    instead of hanging. ``seen`` (partition -> the owner the caller saw) makes the claim conditional: a partition
    whose owner changed since is left alone (another worker resumed it first) and is missing from the result.
    Each takeover is logged with the owner it was taken from, and whether that one was alive.
    """
    check_partition_count(engine, total)
    if not partitions:
        return {}
    try:
        return _raise_epochs(engine, partitions, owner=owner, lock_timeout_s=lock_timeout_s, seen=seen)
    except OperationalError as error:
        if lock_timeout_s is None or not is_lock_timeout(error) or not end_stale_sessions(engine, partitions, owner):
            raise
    return _raise_epochs(engine, partitions, owner=owner, lock_timeout_s=lock_timeout_s, seen=seen)


#: The sessions holding the partition rows (the open transaction whose id is a row's ``xmax``) that belong to a
#: previous owner: ended. MATERIALIZED: the filters certainly apply before pg_terminate_backend sees a pid.
END_STALE_SESSIONS = """
WITH lockers AS MATERIALIZED (
    SELECT DISTINCT l.pid FROM partition p
    JOIN pg_locks l ON l.locktype = 'transactionid' AND l.transactionid = p.xmax AND l.granted
    WHERE p.partition = ANY(:partitions)
), stale AS MATERIALIZED (
    SELECT a.pid, a.application_name FROM pg_stat_activity a JOIN lockers USING (pid)
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.application_name = ANY(:names)
)
SELECT pid, application_name FROM stale WHERE pg_terminate_backend(pid)
"""


def end_stale_sessions(engine: Engine, partitions: Sequence[int], owner: str) -> int:
    """End the sessions of the previous owners of ``partitions`` that hold a lock on those partitions' rows (the
    transaction that last wrote a row, still open, found through the row's ``xmax``). Returns how many it ended.

    Called by a worker that holds the leases of ``partitions`` and timed out waiting for a lock on their rows: the
    previous owner's lease passed on, so a transaction of its that is still open belongs to a process that is paused
    or cut off. PostgreSQL does not end it by itself when it stopped mid-pipeline (statements sent, no Sync yet):
    the session stays ``active`` in ``ClientRead``, where neither ``idle_in_transaction_session_timeout`` nor
    ``statement_timeout`` applies. Ended, its transaction rolls back; its messages are still in ``unacked``, and the
    new owner's restore replays them first, so nothing is lost or reordered. Needs the same database role for every
    worker, or ``pg_signal_backend``.
    """
    with engine.connect() as conn:
        previous = {
            row
            for row in conn.execute(
                select(PARTITIONS.c.owner).where(PARTITIONS.c.partition.in_(list(partitions)))
            ).scalars()
            if row and row != owner
        }
        if not previous:
            return 0
        try:
            ended = conn.execute(
                text(END_STALE_SESSIONS),
                {"partitions": list(partitions), "names": sorted(session_name(o) for o in previous)},
            ).all()
            conn.commit()
        except DBAPIError as error:
            logger.error(
                "partitions %s: cannot end the stale sessions of %s (%s); give every worker the same database "
                "role, or grant it pg_signal_backend",
                ",".join(map(str, partitions)),
                ", ".join(sorted(previous)),
                error.orig,
            )
            return 0
    for pid, name in ended:
        logger.warning(
            "partitions %s: ended session %s (%s) of the previous owner, still inside a transaction after its "
            "lease passed to %s",
            ",".join(map(str, partitions)),
            pid,
            name,
            owner,
        )
    return len(ended)


def _raise_epochs(
    engine: Engine,
    partitions: Sequence[int],
    *,
    owner: str,
    lock_timeout_s: float | None,
    seen: Mapping[int, str | None] | None,
) -> dict[int, int]:
    with engine.begin() as conn:
        if lock_timeout_s is not None and conn.dialect.name == "postgresql":
            conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}"))
        conn.execute(
            upsert(conn, PARTITIONS).on_conflict_do_nothing(index_elements=[PARTITIONS.c.partition]),
            [{"partition": p, "epoch": 0} for p in partitions],
        )
        # Under the rows' locks: the owner compared with ``seen`` and named in the log is the one really replaced.
        before = ownership(conn, partitions, lock=True)
        wanted = [p for p in partitions if seen is None or before[p].last_owner == seen.get(p)]
        if not wanted:
            return {}
        rows = conn.execute(
            update(PARTITIONS)
            .where(PARTITIONS.c.partition.in_(wanted))
            .values(epoch=PARTITIONS.c.epoch + 1, owner=owner, claimed_at=func.now(), released_at=None)
            .returning(PARTITIONS.c.partition, PARTITIONS.c.epoch)
        )
        epochs = {int(p): int(e) for p, e in rows}
    logger.info("claimed partitions %s as %s", ",".join(map(str, wanted)), owner)
    _log_takeovers([before[p] for p in wanted], owner)
    return epochs


def _log_takeovers(previous: Sequence[Ownership], owner: str) -> None:
    """Who took what from whom: a live previous owner is now fenced (it logs who took over when it notices)."""
    by_owner: dict[str, list[Ownership]] = {}
    for found in previous:
        if found.last_owner and found.last_owner != owner:
            by_owner.setdefault(found.last_owner, []).append(found)
    for taken in by_owner.values():
        span = ",".join(str(found.partition) for found in taken)
        if taken[0].live:
            logger.warning(
                "partitions %s: taken over from %s, which is still running: it is fenced (can no longer commit "
                "to them) and stops consuming them",
                span,
                taken[0].describe(),
            )
        else:
            logger.info("partitions %s: resumed from %s", span, taken[0].describe())


def restore_unacked(channel: Any, queues: Iterable[str]) -> int:
    """Put back, at the head of their queues and in their original order, the unacknowledged messages of
    ``queues`` (Redis transport). Called by a new owner right after its claim: the old owner can no longer commit
    (fenced), so its held messages need not wait for the visibility timeout.

    Any still-live holder of such a message is fenced, and the ledger reports the copy as a duplicate.
    """
    qos = getattr(channel, "qos", None)
    if qos is None or not hasattr(qos, "restore_tags"):
        return 0
    restored = 0
    wanted = sorted(set(queues))
    # The pooled client, never ``channel.client``: on a consuming channel that one has a BRPOP outstanding.
    with channel.conn_or_acquire() as client:
        restored += restore_legacy_unacked(client, wanted)
        pipe = client.pipeline(transaction=False)
        for queue in wanted:
            pipe.zrange(unacked_index_key(queue), 0, -1)
            pipe.hkeys(unacked_key(queue))
        replies = pipe.execute()
        for i, queue in enumerate(wanted):
            tags, held = replies[2 * i], replies[2 * i + 1]
            if not tags and not held:
                continue
            # Oldest first by score; held but not indexed (never, from seqproc's fetch): last.
            tags += list(set(held) - set(tags))
            restored += qos.restore_tags(client, queue, tags)
    if restored:
        logger.info("restored %d unacknowledged message(s) of %s to the head of their queues", restored, wanted)
    return restored


def restore_legacy_unacked(client: Any, queues: Sequence[str]) -> int:
    """Upgrading from one ``unacked`` hash for every queue (kombu's, before issue 20): put back, at the head of
    ``queues``, the messages an older worker held there, in order, ahead of anything held since (they are older).
    A cluster never had that hash: nothing to do there."""
    if isinstance(client, redis.RedisCluster) or not client.exists(LEGACY_UNACKED_KEY):
        return 0
    wanted = set(queues)
    routing: dict[Any, str] = {}
    for tag, raw in client.hgetall(LEGACY_UNACKED_KEY).items():
        try:
            _payload, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if routing_key in wanted:
            routing[tag] = routing_key
    tags = list(routing)
    if not tags:
        return 0
    scores = client.zmscore(LEGACY_UNACKED_INDEX_KEY, tags)
    ordered = sorted(zip(tags, scores, strict=True), key=lambda item: item[1] or 0.0)
    # Newest first onto the consuming end: the oldest ends up next in line. Each one moved atomically, once.
    for tag, _score in reversed(ordered):
        queue = routing[tag]
        client.eval(RESTORE_LEGACY_HELD, 4, LEGACY_UNACKED_KEY, LEGACY_UNACKED_INDEX_KEY, queue, bell_key(queue), tag)
    logger.warning(
        "restored %d message(s) an older seqproc worker held in the shared unacked hash to the head of %s",
        len(tags),
        sorted(wanted),
    )
    return len(tags)


def queues_for(partitions: Iterable[int]) -> list[str]:
    return [queue_name(p) for p in partitions]


def pending_messages(client: Any, count: int) -> dict[str, int]:
    """Messages waiting in each of the first ``count`` partition queues, plus those delivered but unacknowledged
    (key ``unacked``), read straight from Redis."""
    pipe = client.pipeline(transaction=False)
    names = queues_for(range(count))
    for name in names:
        pipe.llen(name)
    for name in names:
        pipe.hlen(unacked_key(name))
    replies = pipe.execute()
    depths, unacked = replies[: len(names)], sum(int(n) for n in replies[len(names) :])
    pending = {name: int(depth) for name, depth in zip(names, depths, strict=True) if depth}
    if unacked:
        pending["unacked"] = int(unacked)
    return pending


def set_partition_count(engine: Engine, client: Any, new_count: int, *, outbox: Engine | None = None) -> int:
    """Change the deployment's partition count; refuse while any queue holds events, or while the outbox (on
    ``outbox``, the engine of its database; ``engine`` when None) holds events not sent yet: each row was routed for
    the old count, and a relay started with the new one would send it to the wrong partition or never. Returns the
    old count."""
    with engine.begin() as conn:
        stored = conn.execute(select(META.c.value).where(META.c.name == PARTITION_COUNT)).scalar_one_or_none()
        old_count = int(stored) if stored is not None else new_count
        pending = pending_messages(client, max(old_count, new_count))
        if pending:
            described = ", ".join(f"{name}: {n}" for name, n in sorted(pending.items()))
            raise ConfigError(
                f"cannot change the partition count from {old_count} to {new_count} while events are queued "
                f"({described}): stop the producers, let the workers drain the queues, then try again"
            )
        unsent = outbox_depth(outbox or engine)["unsent"]
        if unsent:
            raise ConfigError(
                f"cannot change the partition count from {old_count} to {new_count} while the outbox holds {unsent} "
                f"event(s) not sent yet (routed for {old_count} partitions): stop the producers, let `seqproc relay` "
                "send them and the workers apply them, then try again"
            )
        conn.execute(
            upsert(conn, META).on_conflict_do_update(index_elements=[META.c.name], set_={"value": str(new_count)}),
            {"name": PARTITION_COUNT, "value": str(new_count)},
        )
        # While the record's row is locked (a worker publishing the count meanwhile waits, then reads the new one).
        # The outbox's copy refuses, from now on, every insert routed with the old count.
        record_outbox_partition_count(outbox or engine, new_count, conn=conn if outbox in (None, engine) else None)
        client.set(PARTITION_COUNT_KEY, new_count)
    closed = close_producer_connections(client)
    logger.info(
        "partition count changed from %d to %d; %d producer connection(s) closed (they read the new count when they "
        "connect again, and refuse to send with the old one)",
        old_count,
        new_count,
        closed,
    )
    return old_count


def close_producer_connections(client: Any) -> int:
    """Close the producers' broker connections (named ``PRODUCER_CLIENT_NAME``, on the broker's database: another
    deployment may share the server): each producer reads the partition count again when it reconnects, at its next
    send. Returns how many were closed."""
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    ids = [
        entry["id"]
        for entry in client.client_list()
        if entry.get("name") == PRODUCER_CLIENT_NAME and str(entry.get("db")) == db
    ]
    for client_id in ids:
        client.client_kill_filter(_id=client_id)
    return len(ids)
