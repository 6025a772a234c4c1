"""Per-event outcomes: what the worker decided for each event, reported to whoever waits on its receipt.

The ledger in PostgreSQL is the durable record. The outcome store (the result backend, Redis) is how a producer
learns it quickly: after each commit the worker writes one small list per event id, and ``Receipt.wait`` blocks on it
with ``BLMOVE key key`` (a non-destructive blocking read), so there is no polling and no missed notification.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import redis

from seqproc.models.clients import redis_client
from seqproc.models.notifications import (
    MemoryNotifications,
    Notices,
    Notification,
    from_xread,
    publish_args,
    xread_args,
)
from seqproc.models.resp import Held, ReplyLost, pack
from seqproc.models.scripts import PUBLISH_NOTIFICATIONS, PUT_OUTCOMES, PUT_OUTCOMES_SHA
from seqproc.models.wire import DEFAULT_SENTINEL_MASTER, outcome_key

Status = Literal["applied", "duplicate", "rejected"]

#: Longest single blocking read while waiting for an outcome.
WAIT_SLICE_S = 2.0
#: Most outcomes one script call writes (see ``RedisOutcomeStore.put_many``).
PUT_CHUNK = 128


@dataclass(frozen=True, slots=True)
class Outcome:
    """``status`` is ``applied``, ``duplicate`` or ``rejected``; ``reason`` says why (``insufficient_stock``,
    ``stale``, ...) or what an applied event found (``already_liked``). A duplicate carries ``first``, the outcome
    of the first application of its key. ``error``: what the worker found wrong with a ``dead_lettered`` event (the
    dead letter's error: an unknown type, another partition, a field that fails the schema, an apply that failed).
    """

    status: Status
    reason: str | None = None
    first: Outcome | None = None
    error: str | None = None

    @property
    def effective(self) -> Outcome:
        """The outcome that counts: ``first`` for a duplicate, else this one."""
        return self.first if self.first is not None else self

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"status": self.status}
        if self.reason is not None:
            wire["reason"] = self.reason
        if self.first is not None:
            wire["first"] = self.first.to_wire()
        if self.error is not None:
            wire["error"] = self.error
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Outcome:
        # "error" is optional on the wire: outcomes written before it existed read as they did; readers that predate
        # it ignore it (they read the fields they know by name).
        first = data.get("first")
        return cls(
            status=data["status"],
            reason=data.get("reason"),
            first=cls.from_wire(first) if first else None,
            error=data.get("error"),
        )


class OutcomeStore(Protocol):
    def put_many(self, outcomes: Sequence[tuple[str, Outcome]], notices: Notices | None = None) -> None: ...

    def notifications(self, topic: str, after: str | None, timeout_s: float) -> list[Notification]: ...

    def wait(self, event_id: str, timeout_s: float) -> Outcome | None: ...

    def get_many(self, event_ids: Sequence[str]) -> list[Outcome | None]: ...

    def forget(self, event_ids: Sequence[str]) -> None: ...


class RedisOutcomeStore:
    """Outcomes in Redis, one list of one element per event id, expiring after ``ttl_s``."""

    def __init__(self, url: str, *, ttl_s: int, sentinel_master: str = DEFAULT_SENTINEL_MASTER) -> None:
        #: The result backend's URL and, for a ``sentinel://`` one, its master's name (``seqproc.aio`` reads the
        #: same outcomes through its own asyncio client).
        self.url = url
        self.sentinel_master = sentinel_master
        # Blocking reads come in slices of WAIT_SLICE_S; the socket timeout must outlast a slice.
        self._client = redis_client(url, sentinel_master=sentinel_master, timeout_s=WAIT_SLICE_S + 10)
        self._ttl_s = ttl_s
        self._put_script = self._client.register_script(PUT_OUTCOMES)
        self._publish_script = self._client.register_script(PUBLISH_NOTIFICATIONS)
        #: A worker's puts go out packed by hand on a connection of their own (made at the first put: a producer,
        #: which only reads, never opens it); one put at a time.
        #: (None on a Redis Cluster: its puts go through the cluster's client, one slot per outcome.)
        self._held = None if isinstance(self._client, redis.RedisCluster) else Held(self._client)
        self._held_lock = threading.Lock()

    def put_many(self, outcomes: Sequence[tuple[str, Outcome]], notices: Notices | None = None) -> None:
        """Write ``outcomes``; then publish ``notices`` to their topics, in the round trip of the last chunk."""
        if isinstance(self._client, redis.RedisCluster):
            self._put_on_cluster(outcomes, notices)
            return
        # A script holds Redis while it runs (~3 us per outcome here), and producers push onto the same server: in
        # chunks, each its own round trip, a producer's push waits behind one short chunk, not a whole flush's.
        last = max(0, len(outcomes) - 1) // PUT_CHUNK * PUT_CHUNK
        for start in range(0, max(len(outcomes), 1), PUT_CHUNK):
            chunk = outcomes[start : start + PUT_CHUNK]
            if start != last or not notices or not notices.items:
                if chunk:
                    self._put(chunk)
                continue
            pipe = self._client.pipeline(transaction=False)
            if chunk:
                self._put(chunk, client=pipe)
            keys, args = publish_args(notices)
            self._publish_script(keys=keys, args=args, client=pipe)
            pipe.execute()

    def _put_on_cluster(self, outcomes: Sequence[tuple[str, Outcome]], notices: Notices | None) -> None:
        """On a cluster: each outcome's key and each topic's stream is in a slot of its own, so one script call
        each (by EVAL: a pipeline cannot load a script a node lacks), pipelined per node by the cluster client."""
        pipe: Any = self._client.pipeline(transaction=False)
        for event_id, outcome in dict(outcomes).items():
            keys, args = self._put_args([(event_id, outcome)])
            pipe.execute_command("EVAL", PUT_OUTCOMES, len(keys), *keys, *args)
        if notices is not None:
            for notice in notices.items:
                keys, args = publish_args(replace(notices, items=[notice]))
                pipe.execute_command("EVAL", PUBLISH_NOTIFICATIONS, len(keys), *keys, *args)
        pipe.execute()

    def notifications(self, topic: str, after: str | None, timeout_s: float) -> list[Notification]:
        """What ``topic`` holds after the cursor ``after`` (None: from the oldest kept), waiting up to
        ``timeout_s`` for one when there is none yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            block = None if remaining <= 0 else max(1, int(min(remaining, WAIT_SLICE_S) * 1000))
            try:
                found = from_xread(self._client.xread(**xread_args(topic, after), block=block))
            except redis.TimeoutError:
                found = []
            if found or remaining <= 0 or time.monotonic() >= deadline:
                return found

    def _put(self, outcomes: Sequence[tuple[str, Outcome]], *, client: Any = None) -> None:
        # One command for the chunk; the loop runs inside Redis.
        keys, args = self._put_args(outcomes)
        if client is not None:
            self._put_script(keys=keys, args=args, client=client)
            return
        packed = pack("EVALSHA", PUT_OUTCOMES_SHA, len(keys), *keys, *args)
        with self._held_lock:
            try:
                self._held.run(packed, script=PUT_OUTCOMES)
            except ReplyLost:
                # A connection the server closed while idle, or one lost before the reply: the same outcomes
                # written twice are the same, so once more, at once, on a new connection.
                self._held.run(packed, script=PUT_OUTCOMES)

    def _put_args(self, outcomes: Sequence[tuple[str, Outcome]]) -> tuple[list[str], list[Any]]:
        # The outcomes with a value of their own come first, each with its value; the plain "applied" ones (nearly
        # all) share one: half the arguments to pack.
        keys: list[str] = []
        values: list[str] = []
        plain: list[str] = []
        # One report per id, the last (a message sent twice may land in one flush: applied, then duplicate).
        for event_id, outcome in dict(outcomes).items():
            if outcome.status == "applied" and outcome.reason is None:
                plain.append(outcome_key(event_id))
            else:
                keys.append(outcome_key(event_id))
                values.append(json.dumps(outcome.to_wire(), separators=(",", ":")))
        return [*keys, *plain], [self._ttl_s, len(values), _APPLIED, *values]

    def wait(self, event_id: str, timeout_s: float) -> Outcome | None:
        key = outcome_key(event_id)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # BLMOVE onto the same list rotates its single element: a blocking read that leaves it in place,
            # so a second wait() (or another process) sees it too. Slices keep the socket from looking dead.
            # Redis takes a fractional timeout; redis-py's stub says int.
            try:
                raw = self._client.blmove(key, key, min(remaining, WAIT_SLICE_S), "RIGHT", "LEFT")  # type: ignore[arg-type]
            except redis.TimeoutError:
                continue  # a slow slice: the deadline above decides
            if raw is not None:
                return Outcome.from_wire(json.loads(raw))

    def get_many(self, event_ids: Sequence[str]) -> list[Outcome | None]:
        pipe = self._client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.lindex(outcome_key(event_id), 0)
        return [Outcome.from_wire(json.loads(raw)) if raw else None for raw in pipe.execute()]

    def forget(self, event_ids: Sequence[str]) -> None:
        """Drop the outcomes of ``event_ids`` (an event sent again under its id: its waiters get the new one)."""
        if event_ids:
            self._client.delete(*(outcome_key(event_id) for event_id in event_ids))


_APPLIED = json.dumps({"status": "applied"}, separators=(",", ":"))


class MemoryOutcomeStore:
    """Outcomes in this process, for the embedded mode (in-process worker on Celery's memory transport)."""

    def __init__(self) -> None:
        self._outcomes: dict[str, Outcome] = {}
        self._changed = threading.Condition()
        self._notifications = MemoryNotifications()

    def put_many(self, outcomes: Sequence[tuple[str, Outcome]], notices: Notices | None = None) -> None:
        with self._changed:
            self._outcomes.update(outcomes)
            self._changed.notify_all()
        if notices is not None:
            self._notifications.publish(notices)

    def notifications(self, topic: str, after: str | None, timeout_s: float) -> list[Notification]:
        return self._notifications.read(topic, after, timeout_s)

    def wait(self, event_id: str, timeout_s: float) -> Outcome | None:
        with self._changed:
            self._changed.wait_for(lambda: event_id in self._outcomes, timeout=timeout_s)
            return self._outcomes.get(event_id)

    def get_many(self, event_ids: Sequence[str]) -> list[Outcome | None]:
        with self._changed:
            return [self._outcomes.get(event_id) for event_id in event_ids]

    def forget(self, event_ids: Sequence[str]) -> None:
        with self._changed:
            for event_id in event_ids:
                self._outcomes.pop(event_id, None)


_MEMORY_STORE = MemoryOutcomeStore()
_STORES: dict[tuple[str, int, str], OutcomeStore] = {}
_STORES_LOCK = threading.Lock()


def outcome_store(url: str, *, ttl_s: int, sentinel_master: str = DEFAULT_SENTINEL_MASTER) -> OutcomeStore:
    """The store for a result-backend URL (for ``sentinel://``, of the master so named), one per URL per process."""
    if url.startswith("memory://"):
        return _MEMORY_STORE
    with _STORES_LOCK:
        store = _STORES.get((url, ttl_s, sentinel_master))
        if store is None:
            store = _STORES[(url, ttl_s, sentinel_master)] = RedisOutcomeStore(
                url, ttl_s=ttl_s, sentinel_master=sentinel_master
            )
        return store


#: Outcome reasons that mean "dead-lettered" (the event is in the dead-letter store) rather than "refused by a rule".
DEAD_LETTER_REASONS = frozenset({"dead_lettered", "parked"})


def count_statuses(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = {"applied": 0, "duplicate": 0, "rejected": 0}
    for outcome in outcomes:
        counts[outcome.status] += 1
    return counts
