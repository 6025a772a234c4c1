"""The rules of ``seqproc deadletter retry`` and ``discard`` (``worker/ops/deadletters.py``) on a migrated SQLite
file: what a letter's body gives to send again, what is refused and why, what a retry or a discard records; and the
migration that adds those records, down and up."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select, text

from seqproc.migrations import alembic_config, migrate
from seqproc.models.errors import DeadLetterRefused, InvalidEvent
from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter
from seqproc.models.wire import partition_for
from seqproc.producer.publish import publisher_for
from seqproc.worker.ops.deadletters import (
    discard_dead_letter,
    events_to_retry,
    list_dead_letters,
    replay_event,
    retry_dead_letter,
)

LIKE = {"type": "like", "key": "k-1", "id": "id-1", "stamp": 5, "article_id": 42, "user_id": 7}


def letter(engine: Engine, body: object, **columns: object) -> int:
    text_body = body if isinstance(body, str) else json.dumps(body)
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(DeadLetter).values(body=text_body, error="invalid event", **columns).returning(DeadLetter.id)
            ).scalar_one()
        )


def test_a_letter_gives_its_event_as_sent_and_fills_in_only_what_it_lacks() -> None:
    [event] = events_to_retry(3, json.dumps(LIKE))
    assert (event.type, event.key, event.id, event.stamp, event.entity_key) == ("like", "k-1", "id-1", 5, "article:42")

    # A hand-pushed event without key, id or stamp: a key derived from the letter (a second retry is a duplicate).
    [bare] = events_to_retry(3, json.dumps({"type": "like", "article_id": 42, "user_id": 7}))
    assert bare.key == "deadletter-3"
    assert bare.id not in (None, "", "id-1")
    assert (bare.stamp or 0) > 0

    # A whole message (received on a queue that is not a partition queue): its events, each keyed apart.
    message = [[], {"events": [LIKE, {"type": "restock", "product_id": 7, "quantity": 2}]}, {}]
    events = events_to_retry(9, json.dumps(message))
    assert [(e.type, e.key) for e in events] == [("like", "k-1"), ("restock", "deadletter-9-1")]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("base64:AAEC", "its body is not JSON (a message seqproc could not read); discard it"),
        ("[1, 2]", "its body is neither an event nor a seqproc message; discard it"),
        (json.dumps({**LIKE, "user_id": 0}), "user_id: must be >= 1 (got 0); fix the cause first"),
        (json.dumps({**LIKE, "type": "gadget.add"}), "type: must be one of like, unlike,"),  # declared nowhere
        (json.dumps([[], {"events": [LIKE, 5]}, {}]), "events[1] is not an object; discard it"),
        (json.dumps({"type": "replay", "key": "r", "id": "r", "stamp": 1, "entity": "article:1"}), "a replay request"),
    ],
)
def test_a_letter_that_still_cannot_be_sent_is_refused_naming_why(body: str, why: str) -> None:
    with pytest.raises(DeadLetterRefused) as refused:
        events_to_retry(4, body)
    assert str(refused.value).startswith("dead letter 4 cannot be sent again: ")
    assert why in str(refused.value)


def test_retry_marks_the_letter_and_a_second_one_is_refused(sqlite_url: str, sqlite_engine: Engine) -> None:
    settings = Settings(database_url=sqlite_url, broker_url="memory://", result_backend="memory://", partitions=16)
    publisher = publisher_for(settings)
    letter_id = letter(sqlite_engine, LIKE, partition=3, event_key="k-1")
    publisher.outcomes.put_many([("id-1", Outcome("rejected", "dead_lettered", error="invalid event"))])

    with sqlite_engine.begin() as conn:
        [receipt] = retry_dead_letter(conn, letter_id, publisher)
    assert (receipt.idempotency_key, receipt.event_id) == ("k-1", "id-1")
    assert receipt.partition == partition_for("article:42", 16)  # routed with the settings in use, not partition 3
    assert publisher.outcomes.get_many(["id-1"]) == [None]  # the old outcome gives way to the new one
    with sqlite_engine.connect() as conn:
        [row] = list_dead_letters(conn, include_closed=True)
        assert list_dead_letters(conn) == []
    assert (row["state"], row["retried_as"]) == ("retried", "k-1")
    assert row["retried_at"] is not None

    with sqlite_engine.begin() as conn, pytest.raises(DeadLetterRefused, match=r"was retried at .* as 'k-1'"):
        retry_dead_letter(conn, letter_id, publisher)
    with sqlite_engine.begin() as conn, pytest.raises(DeadLetterRefused, match="was retried at"):
        discard_dead_letter(conn, letter_id, reason="too late", by="me@host")


def test_discard_keeps_the_reason_and_who(sqlite_engine: Engine) -> None:
    letter_id = letter(sqlite_engine, "not json")
    with sqlite_engine.begin() as conn, pytest.raises(DeadLetterRefused, match="--reason must say why"):
        discard_dead_letter(conn, letter_id, reason=" ", by="me@host")
    with sqlite_engine.begin() as conn:
        discard_dead_letter(conn, letter_id, reason=" junk from a load test ", by="me@host")
    with sqlite_engine.connect() as conn:
        [row] = list_dead_letters(conn, include_closed=True)
    assert (row["state"], row["discard_reason"], row["discarded_by"]) == (
        "discarded",
        "junk from a load test",
        "me@host",
    )
    with sqlite_engine.begin() as conn, pytest.raises(DeadLetterRefused, match=r"was discarded at .* by me@host"):
        discard_dead_letter(conn, letter_id, reason="again", by="me@host")
    with sqlite_engine.begin() as conn, pytest.raises(DeadLetterRefused, match="dead letter 999: there is none"):
        discard_dead_letter(conn, 999, reason="x", by=None)


def test_replay_checks_only_the_keys_form() -> None:
    # A domain nobody declared in this process: routing needs no domain module.
    assert replay_event("gadget:7").entity_key == "gadget:7"
    with pytest.raises(InvalidEvent, match=r"^KEY: must be an entity key, <entity>:<key> .*\(got 'no colon'\)$"):
        replay_event("no colon")


def test_migrating_down_keeps_retried_and_discarded_letters_closed(sqlite_url: str, sqlite_engine: Engine) -> None:
    retried = letter(sqlite_engine, LIKE)
    discarded = letter(sqlite_engine, LIKE)
    still_open = letter(sqlite_engine, LIKE)
    with sqlite_engine.begin() as conn:
        conn.execute(text("UPDATE dead_letter SET retried_at = CURRENT_TIMESTAMP WHERE id = :id"), {"id": retried})
        conn.execute(text("UPDATE dead_letter SET discarded_at = CURRENT_TIMESTAMP WHERE id = :id"), {"id": discarded})
    command.downgrade(alembic_config(sqlite_url), "0005")
    with sqlite_engine.connect() as conn:
        closed = dict(conn.execute(text("SELECT id, replayed_at IS NOT NULL FROM dead_letter")).all())
    assert closed == {retried: 1, discarded: 1, still_open: 0}  # the schema before knows only replayed_at
    migrate(sqlite_url)
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(DeadLetter.retried_at).where(DeadLetter.id == retried)).scalar_one() is None
