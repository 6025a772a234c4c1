"""What application code calls: ``seqproc.like(...)``, ``seqproc.reserve(...)``, ``seqproc.send_many([...])``.

Every call validates first and raises :class:`InvalidEvent` naming the field (nothing is sent then), stamps the
event with this process's ordering clock, publishes it to its partition queue and returns a :class:`Receipt` once
the broker holds it. If the broker cannot be reached it raises :class:`PublishError` (naming ``SEQPROC_BROKER_URL``):
after ``timeout_s`` (keyword-only, default ``SEQPROC_PUBLISH_TIMEOUT_S``) for a broker that does not answer, after
``SEQPROC_PUBLISH_REFUSED_RETRY_S`` (1 s) at most for one that refuses the connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from seqproc.models.domain import EventModel, load_domains
from seqproc.models.events import Event
from seqproc.models.settings import Settings, get_settings
from seqproc.producer.build import (
    build_event,
    build_events,
    commit_event,
    like_event,
    prepare,
    release_event,
    reserve_event,
    restock_event,
    unlike_event,
)
from seqproc.producer.publish import Publisher, publisher_for
from seqproc.producer.receipt import Receipt

_settings_override: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Use ``settings`` instead of the environment's (None: back to the environment). For tests and embedding.
    The domains they name (``SEQPROC_DOMAINS``) are loaded now: in an application loaded before its server forks
    (gunicorn ``--preload``), once, rather than in every worker process at its first call."""
    global _settings_override
    if settings is not None and settings.domains:
        load_domains(settings.domains)  # first: a module that cannot be imported leaves the settings as they were
    _settings_override = settings


def connect(*, timeout_s: float | None = None) -> None:
    """Get this process ready to send: its settings read, their domains loaded, its connection to the broker open
    (and authenticated), so that its first call costs what the others do. For a prefork server's worker process
    at its start (gunicorn's ``post_worker_init``, uWSGI's ``@postfork``, Celery's ``worker_process_init``);
    calls work without it. It may wait up to ``timeout_s`` (default ``SEQPROC_PUBLISH_TIMEOUT_S``) for a broker
    that does not answer; raises :class:`PublishError` if the broker cannot be reached (at once, after a short
    retry, when it refuses the connection)."""
    _publisher().connect(timeout_s=timeout_s)


def current_settings() -> Settings:
    """The producer's settings; the domains they name (``SEQPROC_DOMAINS``) are loaded with them."""
    settings = _settings_override if _settings_override is not None else get_settings()
    if settings.domains:
        load_domains(settings.domains)
    return settings


def _publisher() -> Publisher:
    return publisher_for(current_settings())


def _send(event: Event, timeout_s: float | None) -> Receipt:
    return _publisher().publish([event], timeout_s=timeout_s)[0]


def like(
    article_id: int, user_id: int, *, idempotency_key: str | None = None, timeout_s: float | None = None
) -> Receipt:
    """``user_id`` likes ``article_id`` (a repeated like changes nothing)."""
    return _send(like_event(article_id, user_id, idempotency_key=idempotency_key), timeout_s)


def unlike(
    article_id: int, user_id: int, *, idempotency_key: str | None = None, timeout_s: float | None = None
) -> Receipt:
    """``user_id`` takes back their like of ``article_id`` (an unlike without a like changes nothing)."""
    return _send(unlike_event(article_id, user_id, idempotency_key=idempotency_key), timeout_s)


def reserve(product_id: int, quantity: int, *, reservation_id: str, timeout_s: float | None = None) -> Receipt:
    """Hold ``quantity`` units of ``product_id``; rejected with ``insufficient_stock`` if fewer are available."""
    return _send(reserve_event(product_id, quantity, reservation_id=reservation_id), timeout_s)


def release(product_id: int, reservation_id: str, *, timeout_s: float | None = None) -> Receipt:
    """Give a reservation's units back (once). A release that arrives before its reservation cancels it."""
    return _send(release_event(product_id, reservation_id), timeout_s)


def commit(product_id: int, reservation_id: str, *, timeout_s: float | None = None) -> Receipt:
    """Turn an applied reservation into a sale. Rejected for an unknown or released reservation."""
    return _send(commit_event(product_id, reservation_id), timeout_s)


def restock(
    product_id: int, quantity: int, *, idempotency_key: str | None = None, timeout_s: float | None = None
) -> Receipt:
    """Add ``quantity`` units of ``product_id`` (creating the product on its first restock)."""
    return _send(restock_event(product_id, quantity, idempotency_key=idempotency_key), timeout_s)


def send(event: EventModel, *, idempotency_key: str | None = None, timeout_s: float | None = None) -> Receipt:
    """Send an event of any domain (``seqproc.send(Deposit(account_id=7, amount=100), idempotency_key="req-1")``).

    Without ``idempotency_key`` every call is a new event; a caller that may retry passes its own (a request id),
    and the retry is then a ``duplicate``. Events whose key follows from their fields (a reservation, a transfer)
    take no key."""
    return _send(prepare([event], idempotency_keys=[idempotency_key])[0], timeout_s)


def send_many(events: Iterable[Mapping[str, Any] | EventModel], *, timeout_s: float | None = None) -> list[Receipt]:
    """Send many events with few messages: one per partition (and per ``max_events_per_message``).

    Each item is an event (``Deposit(...)``) or a mapping with ``type`` and that type's fields, as the single calls
    take them, e.g. ``{"type": "like", "article_id": 1, "user_id": 2}``. All are validated before any is sent; the
    first bad one raises :class:`InvalidEvent` naming its index and field (``events[3].quantity: ...``).
    Order is kept per partition, hence per entity.
    """
    built = build_events(events)
    if not built:
        return []
    return _publisher().publish(built, timeout_s=timeout_s)


__all__ = [
    "build_event",
    "build_events",
    "commit",
    "configure",
    "like",
    "release",
    "reserve",
    "restock",
    "send",
    "send_many",
    "unlike",
]
