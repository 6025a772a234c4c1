"""seqproc: apply hot writes in order, one writer per key, exactly once.

    import seqproc

    receipt = seqproc.like(article_id, user_id)     # returns once the broker holds the event
    outcome = receipt.wait(timeout_s=5)             # optional: applied / duplicate / rejected

The rooms of the package:

- :mod:`seqproc.producer`: what application code calls (the calls below are its own);
- :mod:`seqproc.outbox`: the same calls inside the application's own database transaction;
- :mod:`seqproc.aio`: the same calls (and ``seqproc.aio.outbox``'s) as coroutines, for asyncio applications;
- :mod:`seqproc.models`: the contract shared by producer and worker (events, settings, tables, wire names);
- :class:`seqproc.Domain`: your own events and rules, with the machinery of the built-in domains
  (:mod:`seqproc.domains`: likes, stock, balance);
- :mod:`seqproc.worker`: the worker, the scheduled jobs and the ``seqproc`` command line;
- :mod:`seqproc.migrations`: the schema, as Alembic migrations (``seqproc migrate``).
"""

# The built-in domains are registered here, by seqproc's own import, and nowhere else (the contract, models/, imports
# none of them): every `seqproc.*` import runs this first. An application loaded before its server forks (gunicorn
# --preload) also builds their schemas once, not in every worker process at its first call (~50 ms each).
import seqproc.domains  # noqa: F401
from seqproc import aio, outbox, producer
from seqproc.models.domain import Applied, Domain, EventModel, Rejected
from seqproc.models.errors import (
    InvalidEvent,
    OutcomeTimeout,
    OutcomeUnavailable,
    PartitionCountMismatch,
    PublishError,
    SeqprocError,
    ServiceUnavailable,
)
from seqproc.models.notifications import Notification
from seqproc.models.outcomes import Outcome
from seqproc.producer import api as _api
from seqproc.producer import previews as _previews
from seqproc.producer.api import *  # noqa: F403 (the calls, configure, connect: as producer.api lists them)
from seqproc.producer.notify import notifications
from seqproc.producer.previews import *  # noqa: F403 (preview, preview_article, preview_product and their results)
from seqproc.producer.receipt import Receipt, wait_all

__all__ = [
    "Applied",
    "Domain",
    "EventModel",
    "InvalidEvent",
    "Notification",
    "Outcome",
    "OutcomeTimeout",
    "OutcomeUnavailable",
    "PartitionCountMismatch",
    "PublishError",
    "Receipt",
    "Rejected",
    "SeqprocError",
    "ServiceUnavailable",
    "aio",
    "notifications",
    "outbox",
    "producer",
    "wait_all",
]
__all__ += _api.__all__
__all__ += _previews.__all__
