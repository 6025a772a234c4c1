"""What application code calls: ``seqproc.like(...)``, ``seqproc.reserve(...)``, ``seqproc.send_many([...])``.

Every call (:class:`~seqproc.producer.calls.Calls` over :class:`BrokerSender`) validates first and raises
:class:`InvalidEvent` naming the field (nothing is sent then), stamps the event with this process's ordering clock,
publishes it to its partition queue and returns a :class:`Receipt` once the broker holds it. If the broker cannot be
reached it raises :class:`PublishError` (naming ``SEQPROC_BROKER_URL``): after ``timeout_s`` (keyword-only, default
``SEQPROC_PUBLISH_TIMEOUT_S``) for a broker that does not answer, after ``SEQPROC_PUBLISH_REFUSED_RETRY_S`` (1 s) at
most for one that refuses the connection.
"""

from __future__ import annotations

from typing import Never

from seqproc.models.domain import load_domains
from seqproc.models.events import Event
from seqproc.models.settings import Settings, get_settings
from seqproc.producer.calls import Calls, SendOptions
from seqproc.producer.fronts import TIMEOUT_S, Front
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


class BrokerSender:
    """The broker, through this process's publisher of the current settings: a call returns once the broker holds
    its events."""

    def one(self, event: Event, options: SendOptions[float | None, Never]) -> Receipt:
        return _publisher().publish([event], timeout_s=options.get("timeout_s"))[0]

    def many(self, events: list[Event], options: SendOptions[float | None, Never]) -> list[Receipt]:
        if not events:
            return []
        return _publisher().publish(events, timeout_s=options.get("timeout_s"))


_front = Front(
    Calls(BrokerSender()),
    __name__,
    option=TIMEOUT_S,
    sent="Returns once the broker holds the event(s); raises :class:`PublishError` if the broker cannot be reached "
    "within ``timeout_s`` (keyword-only, default ``SEQPROC_PUBLISH_TIMEOUT_S``).",
)
like, unlike = _front.export(Calls.like), _front.export(Calls.unlike)
restock, reserve = _front.export(Calls.restock), _front.export(Calls.reserve)
release, commit = _front.export(Calls.release), _front.export(Calls.commit)
send, send_many = _front.export(Calls.send), _front.export(Calls.send_many)


__all__ = ["configure", "connect"]
# The calls (producer.calls.CALLS): every front exports the same list.
__all__ += ["commit", "like", "release", "reserve", "restock", "send", "send_many", "unlike"]
