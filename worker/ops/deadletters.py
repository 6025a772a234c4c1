"""The dead-letter store, as ``seqproc deadletter`` shows it, and the replay request."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from seqproc.models.domain import domains
from seqproc.models.errors import InvalidEvent
from seqproc.models.events import Event, Replay
from seqproc.models.tables.ledger import DeadLetter, ParkedKey
from seqproc.producer.stamps import next_stamp, unique_id


def list_dead_letters(
    conn: Connection, *, entity_key: str | None = None, include_replayed: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    query = select(DeadLetter).order_by(DeadLetter.id).limit(limit)
    if entity_key is not None:
        query = query.where(DeadLetter.entity_key == entity_key)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    rows = conn.execute(query.with_only_columns(*DeadLetter.__table__.columns)).mappings()
    return [
        {
            "id": row["id"],
            "partition": row["partition"],
            "entity_key": row["entity_key"],
            "event_key": row["event_key"],
            "error": row["error"],
            "created_at": row["created_at"].isoformat() if row["created_at"] else None,
            "replayed_at": row["replayed_at"].isoformat() if row["replayed_at"] else None,
            "body": row["body"][:500],
        }
        for row in rows
    ]


def parked_keys(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(ParkedKey.__table__).order_by(ParkedKey.parked_at)).mappings()
    return [
        {
            "entity_key": r["entity_key"],
            "partition": r["partition"],
            "reason": r["reason"],
            "parked_at": r["parked_at"].isoformat() if r["parked_at"] else None,
        }
        for r in rows
    ]


def replay_event(entity_key: str) -> Event:
    """The control event that makes the partition's worker apply ``entity_key``'s dead letters, then unpark it."""
    prefixes = sorted({domain.entity for domain in domains() if domain.entity != "seqproc"})
    prefix, _, value = entity_key.partition(":")
    if prefix not in prefixes or not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        choices = ", ".join(f"{p}:<key>" for p in prefixes)
        raise InvalidEvent("KEY", f"must be an entity key, one of {choices} (got {entity_key!r})")
    return Replay(type="replay", key=unique_id(), id=unique_id(), stamp=next_stamp(), entity=entity_key)
