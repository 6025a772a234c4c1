"""Publishing events: one Celery message per partition carries a list of that partition's events.

The producer holds its own Celery client app (it imports nothing from ``worker``) and sends the apply task by
name. A call returns once the broker has accepted the message; if the broker cannot be reached within
``publish_timeout_s`` it raises :class:`PublishError`, and the event was not sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery

from models.errors import PublishError
from models.events import APPLY_TASK, Event
from models.outcomes import OutcomeStore, outcome_store
from models.settings import Settings, mask_url
from producer.receipt import Receipt
from producer.routing import partition_for, queue_name

logger = logging.getLogger(__name__)


def client_app(settings: Settings) -> Celery:
    """A Celery app that only sends: same configuration as the workers (``celeryconfig``)."""
    import celeryconfig

    app = Celery("seqproc-producer", set_as_current=False)
    app.conf.update(celeryconfig.celery_config(settings))
    return app


class Publisher:
    """Routes events to partition queues and sends them. Thread-safe; one per settings per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = client_app(settings)
        self.outcomes: OutcomeStore = outcome_store(settings.result_backend, ttl_s=settings.outcome_ttl_s)
        # Pauses of 0, 0.25, 0.5, 0.75, then 1 s: about publish_timeout_s in all before PublishError.
        self._retry_policy = {
            "max_retries": max(1, int(settings.publish_timeout_s + 2.5)),
            "interval_start": 0,
            "interval_step": 0.25,
            "interval_max": 1.0,
        }

    def partition_of(self, event: Event) -> int:
        return partition_for(event.entity_key, self.settings.partitions)

    def publish(self, events: Sequence[Event]) -> list[Receipt]:
        """Send ``events``: one message per partition (split at ``max_events_per_message``), in the order given.

        Returns one receipt per event, in order. Raises :class:`PublishError` if a message could not be sent;
        messages sent before it stay sent (their events will be applied).
        """
        by_partition: dict[int, list[Event]] = {}
        for event in events:
            by_partition.setdefault(self.partition_of(event), []).append(event)
        limit = self.settings.max_events_per_message
        for partition, group in by_partition.items():
            for start in range(0, len(group), limit):
                self.send_message(partition, group[start : start + limit])
        return [self.receipt(event) for event in events]

    def receipt(self, event: Event) -> Receipt:
        partition = self.partition_of(event)
        return Receipt(
            idempotency_key=event.key,
            event_id=event.id,
            event_type=event.type,
            partition=partition,
            queue=queue_name(partition),
            stamp=event.stamp,
            _store=self.outcomes,
        )

    def send_message(self, partition: int, events: Sequence[Event]) -> None:
        """Send one message of ``events``, all of ``partition``; raise :class:`PublishError` if it is not sent."""
        queue = queue_name(partition)
        payload: dict[str, Any] = {"partition": partition, "events": [event.model_dump() for event in events]}
        try:
            self.app.send_task(
                APPLY_TASK,
                kwargs=payload,
                queue=queue,
                routing_key=queue,
                retry=True,
                retry_policy=self._retry_policy,
            )
        except Exception as error:
            # Whatever the transport raised, the message is not known to be stored: say so, and say where.
            raise PublishError(
                f"could not send {len(events)} event(s) to {queue} at {mask_url(self.settings.broker_url)}: "
                f"{type(error).__name__}: {error}; they were NOT sent (first key {events[0].key!r})"
            ) from error
        logger.debug("sent %d event(s) to %s (first key %s)", len(events), queue, events[0].key)


_PUBLISHERS: dict[Settings, Publisher] = {}
_PUBLISHERS_LOCK = threading.Lock()


def publisher_for(settings: Settings) -> Publisher:
    with _PUBLISHERS_LOCK:
        publisher = _PUBLISHERS.get(settings)
        if publisher is None:
            publisher = _PUBLISHERS[settings] = Publisher(settings)
        return publisher
