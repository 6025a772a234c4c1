"""Flower, Celery's monitoring dashboard, on the workers' app and broker (``seqproc flower`` starts it).

Flower builds its view from the workers' task events (``SEQPROC_TASK_EVENTS``, on by default) and from remote-control
replies (``inspect``). It listens on 127.0.0.1 unless told otherwise; on any other address it requires basic auth.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import flower.views
from celery import Celery
from flower.utils.broker import Broker, RedisBase

from seqproc.models.clients import async_cluster_client
from seqproc.models.errors import ConfigError
from seqproc.models.settings import Settings
from seqproc.models.wire import is_cluster_url, is_redis_url


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other host can reach."""
    if address.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def flower_argv(settings: Settings, port: int, address: str) -> list[str]:
    """Flower's command line (``celery flower ...``); it holds the basic-auth password: never print it."""
    if not is_loopback(address) and not settings.flower_basic_auth:
        raise ConfigError(
            f"SEQPROC_FLOWER_BASIC_AUTH is required when Flower binds to {address} (not a loopback address): "
            "set it to user:password, or bind to 127.0.0.1"
        )
    argv = ["flower", f"--port={port}", f"--address={address}", "--persistent=False"]
    if settings.flower_basic_auth:
        argv.append(f"--basic-auth={settings.flower_basic_auth}")
    if settings.flower_url_prefix:
        argv.append(f"--url-prefix={settings.flower_url_prefix}")
    return argv


def flower_app(settings: Settings) -> Celery:
    """The workers' Celery app, set up for Flower.

    Flower only listens (task events, remote-control replies) and reads queue lengths; it never consumes a
    partition queue. On one Redis (or Sentinel) it runs on kombu's stock Redis transport, which speaks the same lists
    and channels as seqproc's: Flower recognises a broker by its URL scheme, and seqproc's transport (a class path)
    would hide the ``redis://`` URL from it, leaving its Broker tab and ``/api/queues/length`` empty.

    On a Redis Cluster kombu's stock transport cannot run (kombu has no cluster client): Flower keeps seqproc's
    cluster transport (task events over pub/sub, ``inspect`` over the pidbox), and its queue lengths are read by
    :class:`ClusterQueueLengths`, which Flower is given in place of its own broker reader.
    """
    from seqproc.worker.app import configure

    app = configure(settings)
    if is_cluster_url(settings.broker_url):
        use_cluster_queue_lengths()
    elif is_redis_url(settings.broker_url):
        app.conf.broker_transport = None
        app.conf.update(broker_url=settings.broker_url)  # every sentinel of a Sentinel URL (kombu's own form)
    return app


def use_cluster_queue_lengths() -> None:
    """Give Flower's views (its Broker tab, ``/api/queues/length``) :class:`ClusterQueueLengths` where the app's
    transport options name a cluster. Flower picks its broker reader by the URL's scheme only (``flower.utils.broker
    .Broker``, looked up by ``flower.views``), and has none for a cluster."""

    def reader(broker_url: str, *args: Any, **kwargs: Any) -> Any:
        if (kwargs.get("broker_options") or {}).get("cluster"):
            return ClusterQueueLengths(broker_url, *args, **kwargs)
        return Broker(broker_url, *args, **kwargs)

    flower.views.Broker = reader  # Flower's own name, read at each request


class ClusterQueueLengths(RedisBase):  # type: ignore[misc]
    """Flower's Redis queue-length reader on a Redis Cluster: each queue's ``LLEN`` on the primary of its slot
    (redis-py's asyncio cluster client, pipelined per node), the cluster named by the ``cluster`` transport option
    (``SEQPROC_BROKER_URL``). Flower's own ``queues`` does the rest (and closes the client)."""

    def __init__(self, broker_url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(broker_url, *args, **kwargs)
        self.redis = async_cluster_client(
            kwargs["broker_options"]["cluster"],
            timeout_s=self.socket_timeout,
            connect_timeout_s=self.socket_connect_timeout,
        )
