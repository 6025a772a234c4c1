"""What the broker holds at the instant of a fault, read straight from Redis: the proof that a fault landed
mid-batch (a worker killed with messages in ``unacked``), not between batches where it proves nothing."""

from __future__ import annotations

import json
from typing import Any

from seqproc.models.wire import UNACKED_PREFIX


def unacked_keys(client: Any) -> list[Any]:
    """Every queue's hash of fetched, unacknowledged messages (``seqproc:unacked:{<queue>}``, kombu's ``unacked``
    split per queue)."""
    return list(client.scan_iter(match=UNACKED_PREFIX + "*"))


def unacked_count(client: Any) -> int:
    """How many messages are fetched and not acknowledged, over every queue."""
    return sum(int(client.hlen(key)) for key in unacked_keys(client))


def events_of(raw: bytes | str) -> list[dict[str, Any]]:
    """The events of one queued message (kombu's envelope around the task's ``[args, kwargs, embed]`` body)."""
    body = json.loads(json.loads(raw)["body"])
    return list(body[1]["events"])


def unacked_event_ids(client: Any) -> list[str]:
    """The ids of the events of every message fetched and not yet acknowledged (``[message, exchange, queue]``)."""
    return [
        str(event["id"])
        for key in unacked_keys(client)
        for entry in client.hvals(key)
        for event in json.loads(json.loads(entry)[0]["body"])[1]["events"]
    ]


def queued_event_ids(client: Any, queue: str) -> list[str]:
    """The ids of the events waiting in ``queue``, next to be fetched first."""
    return [str(event["id"]) for raw in reversed(client.lrange(queue, 0, -1)) for event in events_of(raw)]
