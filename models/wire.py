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

#: kombu's hash of delivered, unacknowledged messages: delivery tag -> JSON ``[message, exchange, routing_key]``.
UNACKED_KEY = "unacked"
#: kombu's sorted set of the same delivery tags, scored by delivery time (the visibility timeout reads it).
UNACKED_INDEX_KEY = "unacked_index"
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
#: the broker lost messages, to be sent again): ``seqproc:relay:pushed:<outbox id>:<queue>``, one counter per outbox
#: database (its id: ``seqproc_outbox_meta``), so that several outboxes can share a broker.
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
#: key's last push (``seqproc.preview`` reads it). ``seqproc:pending:article:42``.
PENDING_PREFIX = "seqproc:pending:"
#: A scheduled job's singleton lock (redis-py Lock, or a Redlock over ``SEQPROC_LOCK_URLS``).
JOB_LOCK_PREFIX = "seqproc:job-lock:"

# -- the result backend's Redis --------------------------------------------------------------------------------------

#: One event's outcome (for ``receipt.wait()``), kept ``SEQPROC_OUTCOME_TTL_S``.
OUTCOME_KEY_PREFIX = "seqproc:outcome:"
#: A notification topic's stream (``notify="user:42"``): ``seqproc:notify:user:42``, kept ``SEQPROC_NOTIFY_TTL_S``.
NOTIFY_PREFIX = "seqproc:notify:"
#: The idempotency keys a topic was told of (a set beside its stream, same expiry): each outcome is told once.
NOTIFIED_PREFIX = "seqproc:notified:"


def bell_key(queue: str) -> str:
    return BELL_PREFIX + queue


def pending_key(entity_key: str) -> str:
    return PENDING_PREFIX + entity_key


def lease_key(queue: str) -> str:
    return LEASE_PREFIX + queue


def relay_pushed_key(outbox: str, queue: str) -> str:
    """The push counter of ``outbox``'s relays on ``queue`` (the queue last: a hash tag in its name keeps the
    counter in the queue's slot)."""
    return f"{RELAY_PUSHED_PREFIX}{outbox}:{queue}"


def legacy_relay_pushed_key(queue: str) -> str:
    """The counter of ``queue`` before counters were per outbox (one for every outbox): a relay that finds no
    counter of its own takes this one's value once (see ``worker.outbox_identity``)."""
    return RELAY_PUSHED_PREFIX + queue


def job_lock_key(job: str) -> str:
    return JOB_LOCK_PREFIX + job


def outcome_key(event_id: str) -> str:
    return OUTCOME_KEY_PREFIX + event_id


def notify_key(topic: str) -> str:
    return NOTIFY_PREFIX + topic


def notified_key(topic: str) -> str:
    return NOTIFIED_PREFIX + topic


#: kombu's form of a replicated Redis behind Sentinel: ``sentinel://h1:26379;sentinel://h2:26379/0``.
SENTINEL_SCHEME = "sentinel://"
#: ``SEQPROC_SENTINEL_MASTER``'s default: the name the sentinels monitor (``sentinel monitor seqproc ...``).
DEFAULT_SENTINEL_MASTER = "seqproc"
#: URL schemes served by seqproc's own Redis transport (plain, TLS, and the master that Sentinel names).
REDIS_SCHEMES = ("redis://", "rediss://", SENTINEL_SCHEME)


def is_redis_url(url: str) -> bool:
    """True for ``redis://``, ``rediss://`` (TLS) and ``sentinel://`` URLs: the broker (or backend) is a Redis
    server (for Sentinel, the master it names)."""
    return url.startswith(REDIS_SCHEMES)
