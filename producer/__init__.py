"""seqproc's producer: what application code imports.

    import producer
    receipt = producer.like(article_id, user_id)
    outcome = receipt.wait(timeout_s=5)   # optional: applied / duplicate / rejected

Imports nothing from ``worker``.
"""

from models.errors import InvalidEvent, OutcomeTimeout, PublishError, SeqprocError
from models.outcomes import Outcome
from producer.api import commit, configure, like, release, reserve, restock, send_many, unlike
from producer.receipt import Receipt, wait_all
from producer.routing import partition_for, queue_name

__all__ = [
    "InvalidEvent",
    "Outcome",
    "OutcomeTimeout",
    "PublishError",
    "Receipt",
    "SeqprocError",
    "commit",
    "configure",
    "like",
    "partition_for",
    "queue_name",
    "release",
    "reserve",
    "restock",
    "send_many",
    "unlike",
    "wait_all",
]
