"""The producer's direct Redis push writes the very message Celery and kombu would: compared key by key on the real
Redis, and consumed by a real worker."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

import seqproc
from seqproc import producer
from seqproc.models.envelope import events_json
from seqproc.models.errors import PublishError
from seqproc.models.events import Event
from seqproc.models.settings import Settings
from seqproc.models.wire import bell_key, queue_name
from seqproc.producer.build import build_event
from seqproc.producer.publish import publisher_for

pytestmark = pytest.mark.services

#: One of each event type, with what a JSON encoder must escape.
EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("like", {"article_id": 2**63 - 1, "user_id": 1, "idempotency_key": 'q"uo\\te é'}),
    ("unlike", {"article_id": 5, "user_id": 7}),
    ("restock", {"product_id": 9, "quantity": 1_000_000}),
    ("reserve", {"product_id": 9, "quantity": 3, "reservation_id": "r-ü-\u2603"}),
    ("release", {"product_id": 9, "reservation_id": "r-ü-\u2603"}),
    ("reserve", {"product_id": 9, "quantity": 2, "reservation_id": "r-2"}),
    ("commit", {"product_id": 9, "reservation_id": "r-2"}),
]


def built() -> list[Event]:
    return [build_event(kind, fields) for kind, fields in EVENTS]


def test_events_serialise_as_model_dump_does() -> None:
    events = built()
    assert json.loads(events_json(events)) == [event.model_dump() for event in events]


#: Fields that differ between any two messages: ids and delivery tags are fresh per message.
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag"}


def strip(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "body": json.loads(message["body"]),
        "content-encoding": message["content-encoding"],
        "content-type": message["content-type"],
        "headers": {k: v for k, v in message["headers"].items() if k not in PER_MESSAGE},
        "properties": {k: v for k, v in message["properties"].items() if k not in PER_MESSAGE},
        "keys": sorted(message),
        "header_keys": sorted(message["headers"]),
        "property_keys": sorted(message["properties"]),
    }


def test_the_direct_push_writes_what_celery_and_kombu_write(clean: Settings) -> None:
    publisher = publisher_for(clean)
    held = publisher._held
    assert held is not None  # the redis:// broker takes the direct path
    events = [e for e in built() if e.type in ("reserve", "release", "commit", "restock")]  # all of product 9
    partition = publisher.partition_of(events[0])
    queue = queue_name(partition)
    client = redis.Redis.from_url(clean.broker_url)
    # A connection an earlier test's `partitions set` closed: _push alone does not retry (send does), so start from
    # a new one.
    held.connection().disconnect()

    publisher._publish([(partition, events)])  # Celery's as_task_v2 + kombu's producer
    publisher._push(held, [(partition, events)])  # ours
    pushed, by_kombu = (json.loads(raw) for raw in client.lrange(queue, 0, -1))  # LPUSH: newest first
    assert strip(pushed) == strip(by_kombu)
    for message in (pushed, by_kombu):
        assert message["headers"]["root_id"] == message["headers"]["id"] == message["properties"]["correlation_id"]
    assert pushed["headers"]["id"] != by_kombu["headers"]["id"]
    assert pushed["properties"]["delivery_tag"] != by_kombu["properties"]["delivery_tag"]
    assert client.lrange(bell_key(queue), 0, -1) == [b"1"]  # rung, and kept to one token


def test_a_worker_applies_what_the_direct_push_sent(clean: Settings, start_worker) -> None:
    start_worker(clean)
    receipts = producer.send_many([{"type": kind, **fields} for kind, fields in EVENTS])
    outcomes = producer.wait_all(receipts, timeout_s=30)
    assert [o.status for o in outcomes] == ["applied"] * len(EVENTS)


def test_the_direct_push_recovers_from_a_script_cache_flush_and_a_dropped_connection(clean: Settings) -> None:
    """The push reads its reply off the socket itself: a Redis that lost its scripts (a restart) gets the script
    again, a connection the server dropped is made again, and both calls are sent exactly once."""
    client = redis.Redis.from_url(clean.broker_url)
    first = producer.like(21, 1)
    queue = first.queue
    client.script_flush()
    producer.like(21, 2)  # NOSCRIPT: loaded, sent again
    held = publisher_for(clean)._held
    assert held is not None
    host, port = held.connection()._sock.getsockname()[:2]
    client.client_kill(f"{host}:{port}")  # the server drops the producer's connection
    producer.like(21, 3)  # the dead connection: reconnected, sent again
    users = [json.loads(json.loads(raw)["body"])[1]["events"][0]["user_id"] for raw in client.lrange(queue, 0, -1)]
    assert sorted(users) == [1, 2, 3]  # each once


def test_an_error_reply_to_the_push_fails_the_call_and_sends_nothing(clean: Settings) -> None:
    client = redis.Redis.from_url(clean.broker_url)
    queue = producer.like(22, 1).queue
    client.delete(queue)
    client.set(queue, "not a list")  # LPUSH onto it fails inside the script: an error reply
    with pytest.raises(PublishError, match="WRONGTYPE"):
        producer.like(22, 2)
    assert client.get(queue) == b"not a list"
    client.delete(queue)
    assert producer.like(22, 3).queue == queue  # the connection is still good for the next call
    assert client.llen(queue) == 1


def test_connect_opens_the_connection_the_calls_send_on(clean: Settings) -> None:
    """``seqproc.connect()`` (a prefork worker's post-fork hook): the connection is open before the first call,
    and the first call sends on it."""
    held = publisher_for(clean)._held
    assert held is not None
    held.connection().disconnect()
    seqproc.connect()
    sock = held.connection()._sock
    assert sock is not None
    producer.like(23, 1)
    assert held.connection()._sock is sock


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_connect_to_an_unreachable_broker_is_a_publish_error(clean: Settings, scheme: str) -> None:
    """On seqproc's Redis transport and through kombu for any other broker."""
    from tests.conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0" if scheme == "redis" else f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    producer.configure(clean.model_copy(update={"broker_url": url}))
    with pytest.raises(PublishError, match="could not connect"):
        seqproc.connect()
