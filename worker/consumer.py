"""Celery's consumer, with every path that would drop a message turned into a dead letter.

Stock Celery logs and acks (drops) a message it cannot decode, one without task headers, one naming an unknown
task, or one of a refused content type (pickle). Here each is stored in ``dead_letter`` with its raw body and the
reason, then acked. A consumer step also applies whatever the batcher holds when the consumer stops (SIGTERM,
broker reconnect), so that a warm shutdown finishes the batch in hand, commits, acks and exits.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.worker.consumer import Consumer

from producer.routing import partition_of_queue
from worker import runtime
from worker.apply import DeadLetterRecord, store_dead_letters
from worker.batching import BATCHER, _should_stop
from worker.decode import body_text
from worker.retry import StopRetrying, retry_in_place

logger = logging.getLogger(__name__)


def dead_letter_message(message: Any, error: str) -> None:
    """Store ``message`` as a dead letter, then ack it. Unacked (left for redelivery) if the store stays down."""
    delivery = message.delivery_info or {}
    queue = delivery.get("routing_key")
    record = DeadLetterRecord(
        error=error[:4000],
        body=body_text(message.body),
        partition=partition_of_queue(queue) if isinstance(queue, str) else None,
        queue=queue if isinstance(queue, str) else None,
        content_type=message.content_type,
    )
    rt = runtime.current()

    def write() -> None:
        with rt.engine.begin() as conn:
            store_dead_letters(conn, [record])

    try:
        retry_in_place(
            write,
            what="store a dead letter",
            backoff_max_s=rt.settings.retry_backoff_max_s,
            should_stop=_should_stop,
        )
    except StopRetrying:
        return
    message.ack()


class SeqprocConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"cannot decode message: {type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter_message(message, "not a Celery task message (no task header)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        dead_letter_message(message, f"unknown task {name!r}: partition queues carry only seqproc.apply")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"invalid task message: {type(exc).__name__}: {exc}")


class FlushOnStop(bootsteps.StartStopStep):
    """Apply and ack what the batcher holds before the consumer's connection goes away."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def stop(self, c: Any) -> None:
        if BATCHER.buffer:
            logger.info("consumer stopping: applying the %d message(s) in hand", len(BATCHER.buffer))
            BATCHER.flush()

    def shutdown(self, c: Any) -> None:
        self.stop(c)
