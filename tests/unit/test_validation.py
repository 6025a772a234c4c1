"""Producer validation: bad input fails at the edge, naming the field, and nothing reaches the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu.transport import memory

from seqproc import producer
from seqproc.models.errors import SeqprocError
from seqproc.models.events import Event
from seqproc.models.settings import Settings
from seqproc.producer.publish import Publisher
from seqproc.producer.sequence import Place

MAX_ID = 2**63 - 1


@dataclass
class Sent:
    """Every message the producer handed to the broker during a test."""

    messages: list[tuple[int, list[Event]]] = field(default_factory=list)

    @property
    def events(self) -> list[Event]:
        return [event for _partition, events in self.messages for event in events]


def memory_messages() -> int:
    """Messages held by kombu's in-process memory transport (shared by the whole process)."""
    return sum(queue.qsize() for queue in memory.Channel.queues.values())


@pytest.fixture
def sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    """The producer on the memory transport, every send recorded (and still delivered to the transport)."""
    producer.configure(
        Settings(broker_url="memory://", result_backend="memory://", database_url="sqlite:///" + str(tmp_path / "p.db"))
    )
    record = Sent()
    original = Publisher._send_messages

    def recording(
        self: Publisher,
        messages: Sequence[tuple[int, Sequence[Event]]],
        remaining_s: float,
        places: Sequence[Place] | None = None,
    ) -> None:
        record.messages.extend((partition, list(events)) for partition, events in messages)
        original(self, messages, remaining_s, places)

    monkeypatch.setattr(Publisher, "_send_messages", recording)
    try:
        yield record
    finally:
        producer.configure(None)


@pytest.fixture
def nothing_sent(sent: Sent) -> Iterator[None]:
    """Fails the test if anything at all was sent, by the recorder or in the memory transport."""
    before = memory_messages()
    yield
    assert sent.messages == []
    assert memory_messages() == before


# (event type, fields as the caller gives them, the field the error must name)
BAD_IDS: list[Any] = [0, -1, True, False, "1", 1.0, 1.5, None, 2**63, 2**64]
CONTROL = ["a\nb", "a\x00b", "a\tb", "a\x1fb", "a\x7fb"]


def _id_cases() -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for bad in BAD_IDS:
        cases += [
            ("like", {"article_id": bad, "user_id": 1}, "article_id"),
            ("unlike", {"article_id": 1, "user_id": bad}, "user_id"),
            ("restock", {"product_id": bad, "quantity": 1}, "product_id"),
            ("reserve", {"product_id": bad, "quantity": 1, "reservation_id": "r1"}, "product_id"),
            ("release", {"product_id": bad, "reservation_id": "r1"}, "product_id"),
            ("commit", {"product_id": bad, "reservation_id": "r1"}, "product_id"),
        ]
    return cases


def _quantity_cases() -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for bad in (0, -5, 1_000_001, True, 2.0, "3", None):
        cases += [
            ("restock", {"product_id": 1, "quantity": bad}, "quantity"),
            ("reserve", {"product_id": 1, "quantity": bad, "reservation_id": "r1"}, "quantity"),
        ]
    return cases


def _key_cases() -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for bad in ["", 5, *CONTROL]:
        cases += [
            ("like", {"article_id": 1, "user_id": 1, "idempotency_key": bad}, "idempotency_key"),
            ("unlike", {"article_id": 1, "user_id": 1, "idempotency_key": bad}, "idempotency_key"),
            ("restock", {"product_id": 1, "quantity": 1, "idempotency_key": bad}, "idempotency_key"),
        ]
    for bad in ["", "x" * 129, 5, None]:
        cases += [
            ("reserve", {"product_id": 1, "quantity": 1, "reservation_id": bad}, "reservation_id"),
            ("release", {"product_id": 1, "reservation_id": bad}, "reservation_id"),
            ("commit", {"product_id": 1, "reservation_id": bad}, "reservation_id"),
        ]
    return cases


BAD_CALLS = _id_cases() + _quantity_cases() + _key_cases()


def _case_id(case: tuple[str, dict[str, Any], str]) -> str:
    event_type, fields, name = case
    return f"{event_type}-{name}-{str(fields[name])[:12]!r}" if name in fields else f"{event_type}-{name}-missing"


SINGLE_CALLS: dict[str, Callable[..., producer.Receipt]] = {
    "like": producer.like,
    "unlike": producer.unlike,
    "reserve": producer.reserve,
    "release": producer.release,
    "commit": producer.commit,
    "restock": producer.restock,
}


def call(event_type: str, fields: Mapping[str, Any]) -> producer.Receipt:
    return SINGLE_CALLS[event_type](**fields)


def assert_names_field(error: producer.InvalidEvent, name: str) -> None:
    assert isinstance(error, ValueError)
    assert isinstance(error, SeqprocError)
    assert error.field == name
    assert str(error).startswith(f"{name}: ")
    assert "\n" not in str(error)


@pytest.mark.usefixtures("nothing_sent")
@pytest.mark.parametrize("case", BAD_CALLS, ids=[_case_id(c) for c in BAD_CALLS])
def test_single_call_rejects_bad_input(case: tuple[str, dict[str, Any], str]) -> None:
    event_type, fields, name = case
    with pytest.raises(producer.InvalidEvent) as caught:
        call(event_type, fields)
    assert_names_field(caught.value, name)


@pytest.mark.usefixtures("nothing_sent")
@pytest.mark.parametrize("case", BAD_CALLS, ids=[_case_id(c) for c in BAD_CALLS])
def test_send_many_names_index_and_field(case: tuple[str, dict[str, Any], str]) -> None:
    event_type, fields, name = case
    good = [
        {"type": "like", "article_id": 1, "user_id": 1},
        {"type": "restock", "product_id": 1, "quantity": 5},
    ]
    with pytest.raises(producer.InvalidEvent) as caught:
        # Valid events first: none of them may be sent when a later one is bad.
        producer.send_many([*good, {"type": event_type, **fields}])
    assert_names_field(caught.value, f"events[2].{name}")


# Caller keys are checked against the caller's limit (128), and a bad reservation id is reported under its own name
# (not under the key derived from it).
CALLER_KEY_CALLS = [
    pytest.param(t, {**f, "idempotency_key": "x" * 129}, "idempotency_key", id=f"{t}-key-129")
    for t, f in [("like", {"article_id": 1, "user_id": 1}), ("restock", {"product_id": 1, "quantity": 1})]
] + [
    pytest.param(t, {**f, "reservation_id": bad}, "reservation_id", id=f"{t}-{label}")
    for t, f in [
        ("reserve", {"product_id": 1, "quantity": 1}),
        ("release", {"product_id": 1}),
        ("commit", {"product_id": 1}),
    ]
    for label, bad in [("newline", "a\nb"), ("nul", "a\x00b"), ("140-chars", "x" * 140)]
]


@pytest.mark.parametrize(("event_type", "fields", "name"), CALLER_KEY_CALLS)
def test_caller_keys_are_checked_under_the_callers_name(
    sent: Sent, event_type: str, fields: dict[str, Any], name: str
) -> None:
    with pytest.raises(producer.InvalidEvent) as caught:
        call(event_type, fields)
    assert_names_field(caught.value, name)
    assert sent.messages == []


@pytest.mark.usefixtures("nothing_sent")
def test_reservation_id_with_control_characters_is_rejected() -> None:
    for event_type in ("reserve", "release", "commit"):
        fields: dict[str, Any] = {"product_id": 1, "reservation_id": "a\nb"}
        if event_type == "reserve":
            fields["quantity"] = 1
        with pytest.raises(producer.InvalidEvent):
            call(event_type, fields)


@pytest.mark.usefixtures("nothing_sent")
@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ({"type": "like", "article_id": 1, "user_id": 1, "quantity": 1}, "quantity"),
        ({"type": "like", "article_id": 1, "user_id": 1, "bogus": 1}, "bogus"),
        (
            {"type": "reserve", "product_id": 1, "quantity": 1, "reservation_id": "r", "idempotency_key": "k"},
            "idempotency_key",
        ),
        ({"type": "release", "product_id": 1, "reservation_id": "r", "quantity": 1}, "quantity"),
        ({"type": "restock", "product_id": 1, "quantity": 1, "user_id": 1}, "user_id"),
        ({"type": "likes", "article_id": 1, "user_id": 1}, "type"),
        ({"type": "", "article_id": 1, "user_id": 1}, "type"),
        ({"article_id": 1, "user_id": 1}, "type"),
        ({"type": "like", "user_id": 1}, "article_id"),
        ({"type": "reserve", "product_id": 1, "reservation_id": "r"}, "quantity"),
    ],
)
def test_send_many_rejects_unknown_and_missing(spec: dict[str, Any], name: str) -> None:
    with pytest.raises(producer.InvalidEvent) as caught:
        producer.send_many([{"type": "like", "article_id": 1, "user_id": 1}, spec])
    assert_names_field(caught.value, f"events[1].{name}")
    assert name in str(caught.value)


@pytest.mark.usefixtures("nothing_sent")
@pytest.mark.parametrize("item", [None, 5, "like", ["like", 1, 2]])
def test_send_many_rejects_non_mapping(item: Any) -> None:
    with pytest.raises(producer.InvalidEvent) as caught:
        producer.send_many([{"type": "like", "article_id": 1, "user_id": 1}, item])
    assert caught.value.field == "events[1]"


def test_error_message_says_what_is_allowed(nothing_sent: None) -> None:
    with pytest.raises(producer.InvalidEvent, match=r"quantity: must be <= 1000000 \(got 1000001\)"):
        producer.restock(1, 1_000_001)
    with pytest.raises(producer.InvalidEvent, match=r"type: must be one of like, unlike, reserve, release, commit"):
        producer.send_many([{"type": "dislike", "article_id": 1, "user_id": 1}])
    with pytest.raises(producer.InvalidEvent, match=r"allowed: article_id, user_id, idempotency_key"):
        producer.send_many([{"type": "like", "article_id": 1, "user_id": 1, "qty": 1}])


def test_valid_input_at_the_bounds_is_sent(sent: Sent) -> None:
    before = memory_messages()
    receipts = [
        producer.like(MAX_ID, MAX_ID, idempotency_key="k" * 128),
        producer.restock(1, 1_000_000),
        producer.reserve(1, 1, reservation_id="r" * 128),
        producer.release(1, "r" * 128),
    ]
    assert [e.type for e in sent.events] == ["like", "restock", "reserve", "release"]
    # The recorder still delivers: the memory transport holds them (the "nothing sent" checks can see a send).
    assert memory_messages() == before + 4
    assert receipts[0].idempotency_key == "k" * 128
    assert sent.events[0].model_dump()["article_id"] == MAX_ID


def test_send_many_sends_valid_events(sent: Sent) -> None:
    receipts = producer.send_many(
        [
            {"type": "like", "article_id": 1, "user_id": 1},
            {"type": "unlike", "article_id": 1, "user_id": 1},
            {"type": "restock", "product_id": 7, "quantity": 3},
        ]
    )
    assert [r.event_type for r in receipts] == ["like", "unlike", "restock"]
    assert sorted(e.type for e in sent.events) == ["like", "restock", "unlike"]
    # Per article, the order given is the order sent.
    likes = [e.type for e in sent.events if e.type in ("like", "unlike")]
    assert likes == ["like", "unlike"]
    assert producer.send_many([]) == []


def test_fresh_key_per_call_when_none_given(sent: Sent) -> None:
    first = producer.like(1, 2)
    second = producer.like(1, 2)
    assert first.idempotency_key != second.idempotency_key
    assert first.event_id != second.event_id
    assert first.stamp < second.stamp
    assert [e.key for e in sent.events] == [first.idempotency_key, second.idempotency_key]
    restocks = producer.send_many([{"type": "restock", "product_id": 1, "quantity": 1}] * 2)
    assert restocks[0].idempotency_key != restocks[1].idempotency_key


def test_given_key_is_kept(sent: Sent) -> None:
    first = producer.like(1, 2, idempotency_key="request-17")
    again = producer.like(1, 2, idempotency_key="request-17")
    restock = producer.restock(3, 4, idempotency_key="delivery-9")
    assert first.idempotency_key == again.idempotency_key == "request-17"
    assert restock.idempotency_key == "delivery-9"
    assert [e.key for e in sent.events] == ["request-17", "request-17", "delivery-9"]
    # Each call is still its own event: the outcome of each is reported under its own id.
    assert first.event_id != again.event_id


def test_reservation_keys_are_derived(sent: Sent) -> None:
    keys = [
        producer.reserve(5, 2, reservation_id="order-1").idempotency_key,
        producer.release(5, "order-1").idempotency_key,
        producer.commit(5, "order-1").idempotency_key,
        producer.reserve(5, 2, reservation_id="order-1").idempotency_key,
    ]
    assert keys == ["reserve:order-1", "release:order-1", "commit:order-1", "reserve:order-1"]
    assert [e.key for e in sent.events] == keys


def test_events_route_to_their_entity_partition(sent: Sent) -> None:
    receipt = producer.like(42, 1)
    assert receipt.partition == producer.partition_for("article:42", 16) == 15
    assert receipt.queue == "seqproc.p15"
    assert sent.messages[0][0] == 15
