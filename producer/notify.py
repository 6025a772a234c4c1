"""Reading outcome notifications: ``seqproc.notifications("user:42", after=cursor, timeout_s=25)``.

An event sent with ``notify="user:42"`` has its outcome published to that topic after the worker's commit (see
:mod:`seqproc.models.notifications`). A reader keeps the ``cursor`` of the last notification it handled and passes
it back as ``after=``: it then gets each notification once, and misses none while the topic keeps them
(``SEQPROC_NOTIFY_TTL_S``, ``SEQPROC_NOTIFY_MAX``).
"""

from __future__ import annotations

from seqproc.models.notifications import Notification
from seqproc.models.outcomes import outcome_store
from seqproc.producer.api import current_settings
from seqproc.producer.build import notice

#: How long ``notifications()`` waits for one when there is none yet, by default.
DEFAULT_NOTIFICATIONS_WAIT_S = 10.0


def notifications(
    topic: str, after: str | None = None, *, timeout_s: float = DEFAULT_NOTIFICATIONS_WAIT_S
) -> list[Notification]:
    """The notifications of ``topic`` after the cursor ``after`` (None: from the oldest kept), oldest first, at
    most a thousand; waits up to ``timeout_s`` (0: not at all) for one when there are none yet, then returns an
    empty list. Each carries its ``cursor``, ``idempotency_key``, ``type``, ``key``, ``status`` and ``reason``."""
    notice(topic, None)  # the topic named as a send names it, or InvalidEvent on ``notify``
    settings = current_settings()
    store = outcome_store(
        settings.result_backend, ttl_s=settings.outcome_ttl_s, sentinel_master=settings.sentinel_master
    )
    return store.notifications(topic, after, max(0.0, timeout_s))
