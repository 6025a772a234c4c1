"""Flower, Celery's monitoring dashboard, on the workers' app and broker (``seqproc flower`` starts it).

Flower builds its view from the workers' task events (``SEQPROC_TASK_EVENTS``, on by default) and from remote-control
replies (``inspect``). It listens on 127.0.0.1 unless told otherwise; on any other address it requires basic auth.
"""

from __future__ import annotations

import ipaddress

from celery import Celery

from seqproc.models.errors import ConfigError
from seqproc.models.settings import Settings
from seqproc.models.wire import is_redis_url


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
    partition queue. It runs on kombu's stock Redis transport, which speaks the same lists and channels as
    seqproc's: Flower recognises a broker by its URL scheme, and seqproc's transport (a class path) would hide the
    ``redis://`` URL from it, leaving its Broker tab and ``/api/queues/length`` empty.
    """
    from seqproc.worker.app import configure

    app = configure(settings)
    if is_redis_url(settings.broker_url):
        app.conf.broker_transport = None
        app.conf.update(broker_url=settings.broker_url)  # every sentinel of a Sentinel URL (kombu's own form)
    return app
