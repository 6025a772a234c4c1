"""How long a send may try, and what its failure means.

A call gives its deadline (``timeout_s``, default ``publish_timeout_s``): a broker that does not answer, or drops the
connection, is tried again until then. A broker that refuses the connection (nothing listens on that port, its host
name does not resolve) is tried for ``publish_refused_retry_s`` at most: waiting longer would not help, and a web
request should hear of it within about a second. Retries log one line (INFO), once the second attempt in a row
failed (a connection the server closed while idle is simply opened again, silently); a call that fails raises
:class:`PublishError` and logs nothing more. A message written whose reply did not come in time (or came only in
part) may be held by the broker: the error then says so instead of "NOT sent".
"""

from __future__ import annotations

import logging
import time

import redis

from seqproc.models.errors import ConfigError, causes, first_line, is_refused
from seqproc.models.settings import Settings, mask_url

logger = logging.getLogger(__name__)

#: The setting that names the broker, for the errors that cannot reach it.
BROKER_SETTING = "SEQPROC_BROKER_URL"
DURABILITY_SETTING = "SEQPROC_PUBLISH_DURABILITY"
#: A call whose remaining time is within this of the socket's own timeout leaves the socket as it is (a first attempt
#: starts microseconds after its deadline was set): the bound costs nothing on the common path.
BOUND_SLACK_S = 0.01
#: Pauses between attempts: the first retry at once (a connection the server closed while idle), then doubling.
FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 1.0


def deadline_of(settings: Settings, timeout_s: float | None) -> float:
    """The ``time.monotonic()`` by which a call must have sent: ``timeout_s`` from now, else the publish timeout."""
    if timeout_s is None:
        return time.monotonic() + settings.publish_timeout_s
    if not timeout_s > 0:
        raise ConfigError(f"timeout_s: must be > 0 seconds (got {timeout_s!r})")
    return time.monotonic() + timeout_s


class Attempts:
    """The retry budget of one send (or connect): until its deadline for a broker that does not answer, at most
    ``publish_refused_retry_s`` for one that refuses the connection; one log line when it starts to wait."""

    def __init__(self, settings: Settings, deadline: float | None) -> None:
        now = time.monotonic()
        self.settings = settings
        self.deadline = deadline if deadline is not None else now + settings.publish_timeout_s
        self.refused_until = min(self.deadline, now + settings.publish_refused_retry_s)
        self.pause_s = 0.0
        #: An attempt failed after its message was written: the broker may hold it.
        self.maybe_sent = False

    def remaining_s(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def retry_after(self, error: BaseException, *, transient: bool, written: bool) -> float | None:
        """The pause before the next attempt after ``error``, or None: give up. ``transient``: the broker could not
        be reached (worth another attempt); ``written``: the failed attempt had written its message."""
        # Only a connection that failed after the write leaves the message's fate unknown; any other error (an error
        # reply, a bug in a caller's event) came before the broker took it.
        self.maybe_sent = self.maybe_sent or (written and transient)
        limit = self.refused_until if is_refused(error) else self.deadline
        now = time.monotonic()
        if not transient or now >= limit:
            return None
        pause_s = min(self.pause_s, limit - now)
        if self.pause_s == 0.0:
            self.pause_s = FIRST_PAUSE_S
        else:
            if self.pause_s == FIRST_PAUSE_S:  # the second failure in a row: say so, once (a failure raises)
                logger.info(
                    "broker unreachable at %s=%s (%s); retrying for up to %.1f s",
                    BROKER_SETTING,
                    mask_url(self.settings.broker_url),
                    first_line(error),
                    limit - now,
                )
            self.pause_s = min(self.pause_s * 2, MAX_PAUSE_S)
        return pause_s


def no_reply_in_time(error: BaseException) -> bool:
    """True when ``error`` is a wait for the broker's reply that ran out (redis-py's "Timeout reading from ...",
    ``asyncio.timeout``'s): the broker may run the command yet (a busy or paused server reads it later). A connection
    refused, closed or reset before the reply means it never took it."""
    return any(
        isinstance(cause, TimeoutError | redis.TimeoutError) and "connecting" not in str(cause)
        for cause in causes(error)
    )
