"""Whether a worker's broker went silent: a connection gone half-open (a black-holed peer, a host gone without
closing it) answers nothing and refuses nothing, so only a wait that runs out tells.

A command with no reply within ``SEQPROC_BROKER_SOCKET_TIMEOUT_S`` (or a wait on the bells with none within its own
timeout plus that) marks the :class:`BrokerWatch` of the worker process. From then on every command of every channel
of that process (the consumer's fetches and acks, kombu's restores, Celery's heartbeat, the lease renewals) fails at
once instead of waiting out another timeout each, and the consumer's event loop ends at its next turn: Celery
reconnects, and a connection that opens and answers clears the watch. A worker therefore notices a half-open broker
connection within about one socket timeout after it next needs the broker, and within ``1 s`` + the socket timeout
while idle (``seqproc.models.transport``, ``Channel.check_responsive``).
"""

from __future__ import annotations

import logging

import redis

logger = logging.getLogger(__name__)


class BrokerUnresponsive(redis.ConnectionError):
    """The broker did not answer within the socket timeout: its connection counts as dead until the worker has
    reconnected. A connection error, so that Celery's event loop ends on it and the consumer reconnects."""


def timed_out(error: BaseException) -> bool:
    """``error`` is, or was caused by, a wait for a reply that ran out (a reset or a refusal comes at once)."""
    return isinstance(error, redis.TimeoutError | TimeoutError) or isinstance(
        error.__cause__, redis.TimeoutError | TimeoutError
    )


class BrokerWatch:
    """Shared by every channel of one worker process (transport option ``broker_watch``), owned by its runtime."""

    def __init__(self) -> None:
        #: Why the broker counts as silent now (None: it answers).
        self.silent: BaseException | None = None

    def mark(self, error: BaseException, *, timeout_s: float, where: str) -> None:
        """The broker did not answer ``where`` within ``timeout_s``: silent until :meth:`clear` (logged once)."""
        if self.silent is not None:
            return
        self.silent = error
        logger.error(
            "broker unresponsive: no reply within %.1f s (SEQPROC_BROKER_SOCKET_TIMEOUT_S) from %s (%s): the "
            "connection counts as dead (gone half-open, or its host went away); reconnecting",
            timeout_s,
            where,
            error,
        )

    def __json__(self) -> dict[str, str | None]:
        """What ``celery inspect stats`` (and Flower's worker page) shows of it: the worker's transport options are
        in its stats, and a reply that cannot be encoded fails the whole command."""
        return {"silent": None if self.silent is None else str(self.silent)}

    def check(self) -> None:
        """Raise :class:`BrokerUnresponsive` while the broker counts as silent."""
        if self.silent is not None:
            raise BrokerUnresponsive(f"the broker stopped answering ({self.silent})") from self.silent

    def clear(self) -> None:
        """A connection opened and answered: the broker is back."""
        if self.silent is not None:
            logger.warning("broker answers again: reconnected after %s", self.silent)
        self.silent = None
