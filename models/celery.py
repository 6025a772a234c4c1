"""Every Celery setting of seqproc, derived from the typed settings (``seqproc.models.settings``); nothing else.

``celery_config(settings)`` builds them. Producers and workers call it with the settings they were given; nothing
looks this module up by name. The repository's ``celeryconfig.py`` re-exports it for ``celery -A`` tools.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from kombu import Queue

from seqproc.models.clients import ClusterUrl, SentinelUrl, is_sentinel_url, sentinel_transport_options
from seqproc.models.settings import Settings
from seqproc.models.transport import CLUSTER_TRANSPORT, SENTINEL_TRANSPORT, TRANSPORT
from seqproc.models.wire import IDLE_QUEUE, JOB_TASK_PREFIX, JOBS_QUEUE, is_cluster_url, is_redis_url, queue_name


def celery_config(settings: Settings) -> dict[str, Any]:
    redis_broker = is_redis_url(settings.broker_url)
    transport_options: dict[str, Any] = {}
    if redis_broker:
        transport_options = {
            # A killed worker's unacknowledged events come back after this (Celery's default is one hour).
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for such events every few seconds; kombu's defaults scan only every 100 s.
            "unacked_restore_interval": settings.restore_interval_s,
            "unacked_restore_throttle": 1,
            # No priorities on partition queues: one Redis list per queue keeps BRPOP short and FIFO exact.
            "priority_steps": [0],
            "socket_connect_timeout": 5,
            # Bounds a publish, ack or fetch on a broker that vanished without closing the connection (half-open).
            "socket_timeout": settings.broker_socket_timeout_s,
            "socket_keepalive": True,
            "health_check_interval": 10,
            # Bodies as they are (JSON text), not base64: a third smaller, and no encode/decode per message.
            # A consumer decodes each message by its own body_encoding property, so mixed queues are fine.
            "body_encoding": None,
            # The visibility restore looks at every partition's queue (the unacked hash is per queue).
            "partitions": settings.partitions,
        }
        if is_sentinel_url(settings.broker_url):
            transport_options |= sentinel_transport_options(settings.sentinel_master, timeout_s=2)
            transport_options["sentinels"] = settings.broker_url
        if is_cluster_url(settings.broker_url):
            transport_options["cluster"] = settings.broker_url
    return {
        # seqproc's Redis transport (reliable, fenced fetch; one client per channel: seqproc.models.transport), on
        # plain and TLS Redis alike. Always set, also to None (kombu picks the transport from the URL): an app
        # reconfigured from Redis to memory:// must not keep it.
        "broker_transport": broker_transport(settings.broker_url),
        "broker_url": celery_broker_url(settings.broker_url),
        "broker_use_ssl": broker_ssl(settings.broker_url),
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        # No Celery result backend: outcomes are kept per event, not per message (models.outcomes writes them to
        # SEQPROC_RESULT_BACKEND). A Redis backend here would also subscribe to a channel on every send.
        "result_backend": None,
        "task_ignore_result": True,
        # JSON only, never pickle: a message of another content type is dead-lettered, not run.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_protocol": 2,
        # acks_late: a crash before commit must redeliver. The worker acks each message itself after the commit.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": False,
        # One process per worker (solo pool); it may hold this many messages unacknowledged.
        # At least a batch's worth of messages: the batch size never depends on the prefetch (celery-batches #17),
        # even when each message carries one event.
        "worker_prefetch_multiplier": max(settings.prefetch_messages, settings.batch_size),
        "worker_concurrency": 1,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": [Queue(queue_name(p), routing_key=queue_name(p)) for p in range(settings.partitions)]
        + [Queue(IDLE_QUEUE, routing_key=IDLE_QUEUE), Queue(JOBS_QUEUE, routing_key=JOBS_QUEUE)],
        # Scheduled jobs (seqproc beat registers them and their schedule: worker.beat.schedule): each a singleton;
        # they run on the beat process's own worker, never on a partition worker, and write through the partition
        # queues. The consumer class (worker.consume.steps) is given to the worker where it is built.
        "task_routes": {f"{JOB_TASK_PREFIX}*": {"queue": JOBS_QUEUE, "routing_key": JOBS_QUEUE}},
        "task_default_queue": queue_name(0),
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "broker_pool_limit": 32,
        "timezone": "UTC",
        "enable_utc": True,
    }


def broker_transport(url: str) -> str | None:
    """seqproc's Redis transport for a Redis broker (its Sentinel form for ``sentinel://``); None: kombu's own."""
    if not is_redis_url(url):
        return None
    if is_cluster_url(url):
        return CLUSTER_TRANSPORT
    return SENTINEL_TRANSPORT if is_sentinel_url(url) else TRANSPORT


def celery_broker_url(url: str) -> str:
    """The broker URL Celery is given: the URL, but only the first sentinel of a Sentinel one (the transport reads
    every sentinel from its ``sentinels`` option; see ``seqproc.models.transport.SentinelChannel``); a cluster's
    first seed node, plainly (the transport reads the cluster from its ``cluster`` option)."""
    if is_cluster_url(url):
        cluster = ClusterUrl.parse(url)
        return cluster.node_url(*cluster.nodes[0])
    if not is_sentinel_url(url):
        return url
    parsed = SentinelUrl.parse(url)
    host, port = parsed.sentinels[0]
    first = url.split(";", 1)[0].strip()
    userinfo = first[len("sentinel://") :].rpartition("@")[0]  # as given (quoted), if any
    return f"sentinel://{userinfo + '@' if userinfo else ''}{host}:{port}/{parsed.db}"


def broker_ssl(url: str) -> dict[str, Any] | None:
    """TLS options of a ``rediss://`` broker whose URL names none: verify the server's certificate against the
    system's CAs (kombu alone would default to not verifying it). A URL that names its own
    (``?ssl_cert_reqs=required&ssl_ca_certs=...``, as redis-py reads them) is read by kombu as it stands."""
    if not url.startswith("rediss://") or "ssl_" in urlsplit(url).query:
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}
