"""What a user domain can get wrong at the edges, refused where it is made instead of breaking a worker's
transaction: a key longer than the columns that hold it (the ledger, the dead-letter store and the parked keys), a
bad derived key, a reason longer than the ledger's column. Without these checks each of them parked its key for
good (the ledger or the dead-letter store refused the row), and an over-long entity key made parking itself fail,
aborting the worker's whole flush without outcomes or acks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import seqproc
from seqproc.models.domain import DomainError
from seqproc.models.fields import MAX_ENTITY_KEY_LENGTH, MAX_REASON_LENGTH
from seqproc.models.tables.ledger import LEDGER_KEY_LENGTH
from seqproc.models.wire import partition_for, queue_name
from seqproc.producer.build import build_events, prepare
from seqproc.worker.consume.decode import decode_message

labels = seqproc.Domain("limits_labels", key="name")


@labels.event("tag")
class Tag(seqproc.EventModel):
    name: str
    label: str = "x"

    def derived_key(self) -> str | None:
        return None if self.label == "x" else self.label


#: A type name as long as allowed: 64 characters with its prefix.
wide = seqproc.Domain("limits_wide", key="n")


@wide.event("e" * (64 - len("limits_wide.")))
class Wide(seqproc.EventModel):
    n: int


def test_an_entity_key_too_long_to_park_is_refused_at_the_producer() -> None:
    fits = "n" * (MAX_ENTITY_KEY_LENGTH - len("limits_labels:"))
    assert prepare([Tag(name=fits)])[0].entity_key == f"limits_labels:{fits}"
    with pytest.raises(seqproc.InvalidEvent) as refused:
        prepare([Tag(name=fits + "n")])
    assert refused.value.field == "name"
    assert f"makes an entity key of {MAX_ENTITY_KEY_LENGTH + 1} characters, over {MAX_ENTITY_KEY_LENGTH}" in str(
        refused.value
    )


def test_a_caller_key_too_long_for_the_ledger_with_a_long_type_is_refused() -> None:
    room = LEDGER_KEY_LENGTH - 64 - 1
    assert len(prepare([Wide(n=1)], idempotency_keys=["k" * room])[0].ledger_key) == LEDGER_KEY_LENGTH
    with pytest.raises(seqproc.InvalidEvent) as refused:
        prepare([Wide(n=1)], idempotency_keys=["k" * (room + 1)])
    assert refused.value.field == "idempotency_key"
    assert f"must be at most {room} characters" in str(refused.value)


def test_mappings_by_type_name_are_held_to_the_same_limits() -> None:
    """``send_many`` mappings and ``seqproc enqueue`` build events in one validation, past ``stamp_event``."""
    with pytest.raises(seqproc.InvalidEvent) as entity:
        build_events([{"type": "limits_labels.tag", "name": "n" * MAX_ENTITY_KEY_LENGTH}])
    assert entity.value.field == "events[0].name"
    room = LEDGER_KEY_LENGTH - 64 - 1
    wide_type = Wide.model_fields["type"].default
    assert build_events([{"type": wide_type, "n": 1, "idempotency_key": "k" * room}])[0].key == "k" * room
    with pytest.raises(seqproc.InvalidEvent) as key:
        build_events([{"type": wide_type, "n": 1, "idempotency_key": "k" * (room + 1)}])
    assert key.value.field == "events[0].idempotency_key"


@pytest.mark.parametrize(
    ("derived", "says"),
    [("k" * 145, "must be at most 144 characters"), ("bad\nkey", "must not contain control characters")],
)
def test_a_bad_derived_key_is_refused_at_the_producer(derived: str, says: str) -> None:
    with pytest.raises(seqproc.InvalidEvent) as refused:
        prepare([Tag(name="a", label=derived)])
    assert refused.value.field == "key"
    assert "Tag.derived_key() returned a bad key" in str(refused.value)
    assert says in str(refused.value)


def test_a_worker_dead_letters_an_event_whose_keys_it_could_not_store() -> None:
    """Pushed straight onto a queue: dead-lettered at decoding, never claimed, applied or parked."""
    name = "y" * 100
    partition = partition_for(f"limits_labels:{name}", 16)
    event = {"type": "limits_labels.tag", "key": "k", "id": "i", "stamp": 1, "name": name}
    message = SimpleNamespace(
        delivery_info={"routing_key": queue_name(partition)},
        headers={"id": "t"},
        content_type="application/json",
        body=json.dumps([[], {"events": [event]}, {}]).encode(),
    )
    decoded = decode_message(message, partitions=16)
    assert decoded.events == []
    [letter] = decoded.dead_letters
    assert letter.error.startswith("invalid event: name: makes an entity key of 114 characters")


@pytest.mark.parametrize("decision", [seqproc.Rejected("r" * (MAX_REASON_LENGTH + 1)), seqproc.Applied(7)])
def test_apply_returning_a_reason_the_ledger_cannot_hold_is_named(decision: object) -> None:
    domain = seqproc.Domain("limits_reasons", key="n")
    domain.apply(lambda state, event: decision)
    with pytest.raises(DomainError, match="a reason is a short identifier"):
        domain.apply_event(None, Wide(n=1))
    ok = seqproc.Rejected("r" * MAX_REASON_LENGTH)
    domain.apply(lambda state, event: ok)
    assert domain.apply_event(None, Wide(n=1)) is ok


def test_the_built_in_schemas_are_built_when_seqproc_is_imported() -> None:
    """So that a server that loads the application before forking builds them once, not in each worker."""
    import subprocess
    import sys

    code = (
        "import seqproc\n"
        "from seqproc.models.domain import _REGISTRY\n"
        "assert {'like', 'reserve', 'balance.deposit'} <= set(_REGISTRY.models), sorted(_REGISTRY.models)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
