"""The outcome store on the real Redis: every outcome of a batch reaches its own event id, a later report replaces an
earlier one, and every key expires."""

from __future__ import annotations

import pytest
import redis

from seqproc.models.outcomes import PUT_CHUNK, Outcome, RedisOutcomeStore
from seqproc.models.settings import Settings
from seqproc.models.wire import outcome_key

pytestmark = pytest.mark.services


def test_a_batch_of_mixed_outcomes_reaches_each_event_id(clean: Settings) -> None:
    store = RedisOutcomeStore(clean.result_backend, ttl_s=60)
    mixed = [
        ("e1", Outcome("applied")),
        ("e2", Outcome("rejected", "insufficient_stock")),
        ("e3", Outcome("applied")),
        ("e4", Outcome("applied", "already_liked")),
        ("e5", Outcome("duplicate", first=Outcome("rejected", "stale"))),
        ("e6", Outcome("applied")),
    ]
    store.put_many(mixed)
    assert store.get_many([event_id for event_id, _ in mixed]) == [outcome for _, outcome in mixed]
    assert store.wait("e4", timeout_s=1) == Outcome("applied", "already_liked")

    # A redelivered event reported again: the later report replaces the earlier one, never queues behind it.
    store.put_many([("e1", Outcome("duplicate", first=Outcome("applied"))), ("e7", Outcome("applied"))])
    assert store.get_many(["e1", "e7"]) == [Outcome("duplicate", first=Outcome("applied")), Outcome("applied")]
    client = redis.Redis.from_url(clean.result_backend)
    assert client.llen(outcome_key("e1")) == 1
    assert all(0 < client.ttl(outcome_key(f"e{n}")) <= 60 for n in range(1, 8))
    assert store.get_many(["never-sent"]) == [None]


def test_a_flush_larger_than_one_script_call_is_written_whole(clean: Settings) -> None:
    """Outcomes go out in chunks of PUT_CHUNK (so that Redis is never held for a whole flush): none is lost or
    shifted at a chunk boundary."""
    store = RedisOutcomeStore(clean.result_backend, ttl_s=60)
    count = 2 * PUT_CHUNK + 7
    outcomes = [(f"b{n}", Outcome("rejected", f"r{n}") if n % 5 == 0 else Outcome("applied")) for n in range(count)]
    store.put_many(outcomes)
    assert store.get_many([event_id for event_id, _ in outcomes]) == [outcome for _, outcome in outcomes]


def test_the_last_report_of_an_event_in_one_batch_wins(clean: Settings) -> None:
    """A message sent twice can land in one flush: its events are reported applied, then duplicate."""
    store = RedisOutcomeStore(clean.result_backend, ttl_s=60)
    store.put_many([("d1", Outcome("applied")), ("d1", Outcome("duplicate", first=Outcome("applied")))])
    assert store.get_many(["d1"]) == [Outcome("duplicate", first=Outcome("applied"))]


def test_puts_survive_a_script_cache_flush_and_a_dropped_connection(clean: Settings) -> None:
    """A worker's puts go packed by hand on a connection of their own: a Redis that lost its scripts (a restart) gets
    the script again; a connection the server dropped is made again and the put written again (the same outcomes
    written twice are the same)."""
    store = RedisOutcomeStore(clean.result_backend, ttl_s=60)
    client = redis.Redis.from_url(clean.result_backend)
    store.put_many([("f1", Outcome("applied"))])
    client.script_flush()
    store.put_many([("f2", Outcome("rejected", "sold_out"))])  # NOSCRIPT: loaded, sent again
    host, port = store._held.connection()._sock.getsockname()[:2]
    client.client_kill(f"{host}:{port}")
    store.put_many([("f3", Outcome("applied"))])  # the dropped connection: made again
    expected = [Outcome("applied"), Outcome("rejected", "sold_out"), Outcome("applied")]
    assert store.get_many(["f1", "f2", "f3"]) == expected
