"""seqproc's producer: what application code imports.

    from seqproc import producer
    receipt = producer.like(article_id, user_id)
    outcome = receipt.wait(timeout_s=5)   # optional: applied / duplicate / rejected

Imports nothing from ``worker``.
"""

from seqproc.models.errors import (
    InvalidEvent,
    OutcomeTimeout,
    OutcomeUnavailable,
    PublishError,
    SeqprocError,
    ServiceUnavailable,
)
from seqproc.models.notifications import Notification
from seqproc.models.outcomes import Outcome
from seqproc.models.wire import partition_for, queue_name
from seqproc.producer import api as _api
from seqproc.producer import previews as _previews
from seqproc.producer.api import *  # noqa: F403 (the calls, configure, connect: as producer.api lists them)
from seqproc.producer.notify import notifications
from seqproc.producer.previews import *  # noqa: F403 (preview, preview_article, preview_product and their results)
from seqproc.producer.receipt import Receipt, wait_all

__all__ = [
    "InvalidEvent",
    "Notification",
    "Outcome",
    "OutcomeTimeout",
    "OutcomeUnavailable",
    "PublishError",
    "Receipt",
    "SeqprocError",
    "ServiceUnavailable",
    "notifications",
    "partition_for",
    "queue_name",
    "wait_all",
]
__all__ += _api.__all__
__all__ += _previews.__all__
