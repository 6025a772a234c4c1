"""The worker's one-call decode of a whole body accepts exactly what the event-by-event path accepts, with the same
events; anything else falls through to that path, which dead-letters precisely what is at fault."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker.consume import decode
from seqproc.worker.consume.decode import decode_message
from seqproc.worker.engine.sequence import Sequenced

PARTITIONS = 16
HOME = partition_for(article_key(1), PARTITIONS)


def message(body: str, partition: int = HOME) -> Any:
    return SimpleNamespace(
        delivery_info={"routing_key": queue_name(partition)},
        headers={"id": "task"},
        content_type="application/json",
        body=body,
    )


def good(n: int) -> dict[str, Any]:
    return {"key": f"k{n}", "id": f"i{n}", "stamp": 10**18 + n, "type": "like", "article_id": 1, "user_id": n + 1}


#: Ways to spoil one event: each is a change the schema (or the routing) must refuse.
SPOILERS: list[tuple[str, Any]] = [
    ("user_id", 0),
    ("user_id", "7"),
    ("user_id", 1.0),
    ("user_id", True),
    ("user_id", 2**63),
    ("stamp", -1),
    ("key", ""),
    ("key", "a\nb"),
    ("type", "lik"),
    ("extra", 1),
    ("article_id", 2),  # another article: it may belong to another partition
    ("id", None),
]


@st.composite
def bodies(draw: st.DrawFn) -> str:
    events: list[Any] = [good(n) for n in range(draw(st.integers(0, 6)))]
    for index in draw(st.lists(st.integers(0, max(0, len(events) - 1)), max_size=2)) if events else []:
        field, value = draw(st.sampled_from(SPOILERS))
        events[index] = {**events[index], field: value}
    if draw(st.booleans()) and events:
        del events[0][draw(st.sampled_from(sorted(events[0])))]
    kwargs: Any = {"partition": HOME, "events": events}
    if draw(st.integers(0, 9)) == 0:
        kwargs = {"events": {"not": "a list"}}
    return json.dumps([[], kwargs, {}])


def slow(body: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(decode, "_all_valid", lambda *_: None)
        return decode_message(message(body), partitions=PARTITIONS)


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_the_fast_decode_agrees_with_the_event_by_event_one(body: str) -> None:
    patch = pytest.MonkeyPatch()
    try:
        expected = slow(body, patch)
    finally:
        patch.undo()
    fast = decode_message(message(body), partitions=PARTITIONS)
    assert fast.events == expected.events
    assert [(d.error, d.event_key, d.body) for d in fast.dead_letters] == [
        (d.error, d.event_key, d.body) for d in expected.dead_letters
    ]
    accepted = decode._all_valid(body, HOME, PARTITIONS)
    if accepted is not None:  # taken only when the event-by-event path finds nothing wrong
        assert expected.dead_letters == []
        assert accepted == (expected.events, expected.sequence)


def test_a_valid_body_is_decoded_in_one_call() -> None:
    body = json.dumps([[], {"partition": HOME, "events": [good(n) for n in range(32)]}, {}])
    assert decode._all_valid(body, HOME, PARTITIONS) is not None
    decoded = decode_message(message(body), partitions=PARTITIONS)
    assert [e.user_id for e in decoded.events] == list(range(1, 33))  # type: ignore[union-attr]
    assert decoded.dead_letters == []
    # The same events on another partition's queue: not taken by the fast path, dead-lettered by the slow one.
    other = (HOME + 1) % PARTITIONS
    assert decode._all_valid(body, other, PARTITIONS) is None
    assert len(decode_message(message(body, other), partitions=PARTITIONS).dead_letters) == 32


def test_a_body_nested_deeper_than_the_parser_recurses_is_a_dead_letter() -> None:
    """Never raises for bad input: a RecursionError would stop the partition (the fetch is in unacked)."""
    decoded = decode_message(message('[[], {"events": ' + "[" * 100_000 + "]" * 100_000 + "}, {}]"), partitions=16)
    assert decoded.events == []
    assert len(decoded.dead_letters) == 1
    assert "not a seqproc message" in decoded.dead_letters[0].error


def test_a_message_says_its_place_in_its_producers_sequence_on_both_paths() -> None:
    events = [good(n) for n in range(3)]
    body = json.dumps([[], {"partition": HOME, "events": events, "seq": ["gen1@h/x", 41]}, {}])
    assert decode_message(message(body), partitions=PARTITIONS).sequence == Sequenced("gen1@h/x", 41, 3)
    # One bad event sends the message down the event-by-event path: it still arrived, with all three.
    broken = json.dumps([[], {"partition": HOME, "events": [*events[:2], {"type": "like"}], "seq": ["p", 7]}, {}])
    decoded = decode_message(message(broken), partitions=PARTITIONS)
    assert decoded.dead_letters
    assert decoded.sequence == Sequenced("p", 7, 3)
    # A malformed place is no place (no check), never a crash.
    odd = json.dumps([[], {"partition": HOME, "events": events, "seq": ["p", -1]}, {}])
    assert decode_message(message(odd), partitions=PARTITIONS).sequence is None
