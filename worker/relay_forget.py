"""The relay's forgetting: outbox rows deleted once a worker is done with their event.

A worker is done with an event once the idempotency ledger holds its key (applied), or the dead-letter store holds
it (its entity was parked, or it failed to apply: replay takes it from there, not from the outbox). Sent again,
such an event would only be a duplicate, or be dead-lettered a second time; the other rows stay.

Each scan (:meth:`Forgetter.scan`, once per relay pass) checks the next ``FORGET_CHUNK`` sent rows after where the
last one stopped (wrapping to the oldest when a scan comes back short), so rows whose key never reaches the ledger
do not hold back the ones behind them; after a scan that forgot nothing, the next waits ``FORGET_IDLE_S``.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import Connection, Engine, text

#: Sent rows checked against the ledger per pass.
FORGET_CHUNK = 5_000
#: After a pass that forgot nothing, the next look waits this long: rows whose key is not in the ledger yet (in
#: flight, or never to come: dead-lettered, parked) are not checked again on every pass.
FORGET_IDLE_S = 1.0

_SENT = text(
    "SELECT id, ledger_key FROM seqproc_outbox WHERE push_seq IS NOT NULL AND id > :after ORDER BY id LIMIT :limit"
)
_APPLIED = text("SELECT key FROM idempotency_ledger WHERE key = ANY(CAST(:keys AS text[]))")
_DEAD_LETTERED = text("SELECT event_key, body FROM dead_letter WHERE event_key = ANY(CAST(:keys AS text[]))")
_FORGET = text("DELETE FROM seqproc_outbox WHERE id = ANY(CAST(:ids AS bigint[]))")


class Forgetter:
    """Deletes the outbox rows (``outbox``) whose event a worker is done with (``ledger``: seqproc's own database).
    Keeps the scan's place between passes; not thread-safe, as its :class:`~seqproc.worker.relay.Relay`."""

    def __init__(self, outbox: Engine, ledger: Engine) -> None:
        self.outbox = outbox
        self.ledger = ledger
        #: Where the next scan starts (an id; 0: from the oldest). It moves on by a chunk each pass and wraps when a
        #: scan comes back short, so that rows never forgotten cannot hold back the ones behind them.
        self._after = 0
        #: No scan before this (``time.monotonic()``): set after a scan that forgot nothing.
        self._not_before = 0.0

    def scan(self) -> int:
        """Check the next chunk of sent rows and delete those a worker is done with; how many it deleted."""
        if time.monotonic() < self._not_before:
            return 0
        with self.outbox.connect() as conn:
            sent = conn.execute(_SENT, {"after": self._after, "limit": FORGET_CHUNK}).all()
        self._after = int(sent[-1][0]) if len(sent) == FORGET_CHUNK else 0
        done_keys = self.done([key for _, key in sent])
        done = [int(row_id) for row_id, key in sent if key in done_keys]
        if not done:
            self._not_before = time.monotonic() + FORGET_IDLE_S
            return 0
        with self.outbox.begin() as conn:
            return self.forget(conn, done)

    @staticmethod
    def forget(conn: Connection, ids: list[int]) -> int:
        """Delete these outbox rows in ``conn``'s transaction; how many there were."""
        return int(conn.execute(_FORGET, {"ids": ids}).rowcount)

    def done(self, keys: list[str]) -> set[str]:
        """Of these ledger keys, those a worker is done with: applied (the ledger holds the key), or kept in the
        dead-letter store (its entity was parked, or it failed to apply; a replay brings it back from there, not
        from the outbox). Sent again, such an event would only be a duplicate, or be dead-lettered a second time."""
        wanted = list(dict.fromkeys(keys))
        done: set[str] = set()
        if not wanted:
            return done
        with self.ledger.connect() as conn:
            for start in range(0, len(wanted), FORGET_CHUNK):
                chunk = wanted[start : start + FORGET_CHUNK]
                done.update(row[0] for row in conn.execute(_APPLIED, {"keys": chunk}))
                rest = {key for key in chunk if key not in done}
                if not rest:
                    continue
                # A dead letter keeps the event's own key; the ledger's is "<type>:<key>" (the type from its body).
                event_keys = list({key.partition(":")[2] for key in rest})
                letters = conn.execute(_DEAD_LETTERED, {"keys": event_keys})
                done.update(rest.intersection(_ledger_key(key, body) for key, body in letters))
        return done


def _ledger_key(event_key: str, body: str) -> str | None:
    """The ledger key of a dead-lettered event (None if its body is not an event's JSON)."""
    try:
        event_type = json.loads(body).get("type")
    except (ValueError, AttributeError):
        return None
    return f"{event_type}:{event_key}" if isinstance(event_type, str) else None
