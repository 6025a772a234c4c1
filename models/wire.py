"""Everything seqproc puts on the wire, in one place: routing, queue names, the task name, every Redis key and prefix.

This page answers "what does seqproc write to the broker and the result backend" (as arq's ``constants.py`` does).
The Lua scripts that write them are in :mod:`seqproc.models.scripts`; the Celery envelope in
:mod:`seqproc.models.envelope`.
The routing must never change by accident (a test pins it): a key that moved partition would have two writers.
"""

from __future__ import annotations

import zlib

# -- routing and queues ----------------------------------------------------------------------------------------------

#: Partition queues: ``seqproc.p00``, ``seqproc.p01``, ... (a Redis list each; the routing key is the same string).
QUEUE_PREFIX = "seqproc.p"
#: The queue of the scheduled jobs (``seqproc beat`` consumes it).
JOBS_QUEUE = "seqproc.jobs"
#: An auto worker that holds no partition yet listens here (nobody publishes to it): Celery, given no queue at all,
#: would consume every configured queue.
IDLE_QUEUE = "seqproc.idle"

#: The one task name partition queues carry: a list of one partition's events.
APPLY_TASK = "seqproc.apply"
#: Scheduled jobs are ``seqproc.job.<name>``.
JOB_TASK_PREFIX = "seqproc.job."


def partition_for(entity_key: str, partitions: int) -> int:
    """``crc32(entity_key) % partitions``: stable across processes, hosts and Python versions (unlike ``hash``)."""
    return zlib.crc32(entity_key.encode("utf-8")) % partitions


def queue_name(partition: int) -> str:
    """``seqproc.p00``, ``seqproc.p01``, ...; the routing key is the same string."""
    return f"{QUEUE_PREFIX}{partition:02d}"


def partition_of_queue(name: str) -> int | None:
    """The partition a queue name stands for, or None if it is not a partition queue."""
    if not name.startswith(QUEUE_PREFIX):
        return None
    digits = name[len(QUEUE_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def article_key(article_id: int) -> str:
    return f"article:{article_id}"


def product_key(product_id: int) -> str:
    return f"product:{product_id}"


# -- the broker's Redis ----------------------------------------------------------------------------------------------
#
# Every key of one queue lives in the queue's Redis Cluster slot: its name carries the queue's name as a hash tag
# (``seqproc.bell.{seqproc.p05}``), and a key with a tag hashes to the slot of the tag alone, which is the slot of the
# queue's own list (``seqproc.p05``, no braces: hashed whole). So every script touches one slot and declares every
# key it touches, on one Redis and on a cluster alike (one layout, one code path). The queue names, hence routing,
# are those of before; the keys below took their braces (and ``unacked`` was split per queue) in issue 20: an
# upgrade from before is handled by the workers (``worker.ownership.partitions.restore_legacy_unacked``, the relay's
# counter adoption) and the README (Upgrading).

#: A queue's hash of delivered, unacknowledged messages (kombu's ``unacked``, one per queue): delivery tag -> JSON
#: ``[message, exchange, routing_key]``. ``seqproc:unacked:{seqproc.p05}``.
UNACKED_PREFIX = "seqproc:unacked:"
#: A queue's sorted set of the same delivery tags, scored by delivery time (the visibility timeout reads it).
UNACKED_INDEX_PREFIX = "seqproc:unacked_index:"
#: The lock (kombu's ``Mutex``) of a queue's visibility restore: one restorer at a time.
UNACKED_MUTEX_PREFIX = "seqproc:unacked_mutex:"
#: kombu's one hash and index of every queue's unacknowledged messages, before they were split per queue: a worker
#: that claims a partition gives back what an older worker left there (``restore_legacy_unacked``).
LEGACY_UNACKED_KEY = "unacked"
LEGACY_UNACKED_INDEX_KEY = "unacked_index"
#: A queue's bell: the producer pushes a token with each message (kept to one); workers block on the bells.
BELL_PREFIX = "seqproc.bell."
#: A partition queue's fetch fence: the owner token of the one worker whose fetch may take from it (checked inside
#: the fetch script). An auto worker's lease (``--partitions auto``: taken with ``SET NX``, with a time limit), or a
#: fixed worker's claim (set when it claims, no time limit, deleted at a graceful exit). So a fixed worker's
#: partitions are never free to auto workers: do not mix the two over the same partitions (README, Deploy).
LEASE_PREFIX = "seqproc:lease:"
#: Live auto workers' heartbeats (a sorted set: owner -> last beat).
WORKERS_KEY = "seqproc:workers"
#: How many messages the relays of one outbox pushed onto a partition queue (``seqproc relay``: a lower count means
#: the broker lost messages, to be sent again): ``seqproc:relay:pushed:<outbox id>:{<queue>}``, one counter per
#: outbox database (its id: ``seqproc_outbox_meta``), so that several outboxes can share a broker.
RELAY_PUSHED_PREFIX = "seqproc:relay:pushed:"
#: The deployment's partition count, as seqproc's database records it (``seqproc_meta``): written by
#: ``seqproc migrate``, every worker and relay at start and ``seqproc partitions set``; a producer reads it each time
#: it connects and refuses to send if its ``SEQPROC_PARTITIONS`` differs.
PARTITION_COUNT_KEY = "seqproc:partitions"
#: The name (``CLIENT SETNAME``) of the producers' broker connections: ``seqproc partitions set`` closes them, so that
#: each reads the new count when it connects again (and refuses to route with the old one).
PRODUCER_CLIENT_NAME = "seqproc-producer"
#: An entity key's pending index: the events pushed for it and not acknowledged yet (a hash: event id -> order +
#: event JSON), written by the push scripts, deleted by the worker's ack, kept ``SEQPROC_PENDING_TTL_S`` after the
#: key's last push (``seqproc.preview`` reads it). In its queue's slot: ``seqproc:pending:{seqproc.p05}:article:42``.
PENDING_PREFIX = "seqproc:pending:"
#: A scheduled job's singleton lock (redis-py Lock, or a Redlock over ``SEQPROC_LOCK_URLS``).
JOB_LOCK_PREFIX = "seqproc:job-lock:"


def slot_tag(queue: str) -> str:
    """``{seqproc.p05}``: the hash tag that puts a key in ``queue``'s Redis Cluster slot."""
    return "{" + queue + "}"


def unacked_key(queue: str) -> str:
    return UNACKED_PREFIX + slot_tag(queue)


def unacked_index_key(queue: str) -> str:
    return UNACKED_INDEX_PREFIX + slot_tag(queue)


def unacked_mutex_key(queue: str) -> str:
    return UNACKED_MUTEX_PREFIX + slot_tag(queue)


def bell_key(queue: str) -> str:
    return BELL_PREFIX + slot_tag(queue)


def pending_key(queue: str, entity_key: str) -> str:
    """The pending index of ``entity_key``, whose events go to ``queue``."""
    return f"{PENDING_PREFIX}{slot_tag(queue)}:{entity_key}"


def lease_key(queue: str) -> str:
    return LEASE_PREFIX + slot_tag(queue)


def relay_pushed_key(outbox: str, queue: str) -> str:
    """The push counter of ``outbox``'s relays on ``queue`` (in the queue's slot)."""
    return f"{RELAY_PUSHED_PREFIX}{outbox}:{slot_tag(queue)}"


def legacy_relay_pushed_keys(outbox: str, queue: str) -> tuple[str, str]:
    """The counters of ``queue`` before they were in the queue's slot: the outbox's own, then the one every outbox
    shared before counters were per outbox. A relay that finds no counter takes the first of their values it finds,
    once (see ``worker.outbox_identity``)."""
    return f"{RELAY_PUSHED_PREFIX}{outbox}:{queue}", RELAY_PUSHED_PREFIX + queue


def job_lock_key(job: str) -> str:
    return JOB_LOCK_PREFIX + job


# -- the result backend's Redis --------------------------------------------------------------------------------------

#: One event's outcome (for ``receipt.wait()``), kept ``SEQPROC_OUTCOME_TTL_S``.
OUTCOME_KEY_PREFIX = "seqproc:outcome:"
#: A notification topic's stream (``notify="user:42"``): ``seqproc:notify:user:42``, kept ``SEQPROC_NOTIFY_TTL_S``.
NOTIFY_PREFIX = "seqproc:notify:"
#: The idempotency keys a topic was told of (a set beside its stream, same expiry, in its slot): each outcome is told
#: once. ``seqproc:notified:{seqproc:notify:user:42}``.
NOTIFIED_PREFIX = "seqproc:notified:"


def outcome_key(event_id: str) -> str:
    return OUTCOME_KEY_PREFIX + event_id


def notify_key(topic: str) -> str:
    return NOTIFY_PREFIX + topic


def notified_key(topic: str) -> str:
    return NOTIFIED_PREFIX + "{" + notify_key(topic) + "}"


#: kombu's form of a replicated Redis behind Sentinel: ``sentinel://h1:26379;sentinel://h2:26379/0``.
SENTINEL_SCHEME = "sentinel://"
#: ``SEQPROC_SENTINEL_MASTER``'s default: the name the sentinels monitor (``sentinel monitor seqproc ...``).
DEFAULT_SENTINEL_MASTER = "seqproc"
#: A Redis Cluster, by its seed nodes: ``redis+cluster://h1:7000,h2:7001,h3:7002`` (``rediss+cluster://``: TLS).
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
#: URL schemes served by seqproc's own Redis transport (plain, TLS, the master that Sentinel names, a cluster).
REDIS_SCHEMES = ("redis://", "rediss://", SENTINEL_SCHEME, *CLUSTER_SCHEMES)


def is_redis_url(url: str) -> bool:
    """True for ``redis://``, ``rediss://`` (TLS), ``sentinel://`` and ``redis+cluster://`` URLs: the broker (or
    backend) is a Redis server (for Sentinel, the master it names; for a cluster, its nodes)."""
    return url.startswith(REDIS_SCHEMES)


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)
