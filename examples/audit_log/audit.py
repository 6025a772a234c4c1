"""An audit log of the events a worker applied: one JSON line per event, written once its outcome is published and
its message acked. Run a worker with it:

    SEQPROC_HOOKS=examples.audit_log.audit SEQPROC_AUDIT_LOG=audit.jsonl seqproc worker

A hook is a function named after it (this module's ``after_settle`` and ``on_dead_letter``) or a method of an
object named ``module:attribute``; see docs/hooks.md.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from seqproc.worker.hooks import Settled

#: Where the lines go (appended; one writer per file).
PATH = os.environ.get("SEQPROC_AUDIT_LOG", "audit.jsonl")
_lock = threading.Lock()


def _write(lines: list[dict[str, Any]]) -> None:
    with _lock, open(PATH, "a", encoding="utf-8") as file:
        file.writelines(json.dumps(line) + "\n" for line in lines)


def after_settle(settled: Settled) -> None:
    """Each event applied in this partition batch, with its partition and outcome."""
    lines = [
        {
            "hook": "after_settle",
            "partition": settled.partition,
            "type": event.type,
            "entity": event.entity_key,
            "key": event.key,
            "event": event.model_dump(mode="json", exclude={"type", "key", "id", "stamp"}),
            "reason": outcome.reason,
        }
        for event, outcome in settled.applied()
    ]
    if lines:
        _write(lines)


def on_dead_letter(records: Sequence[Any]) -> None:
    """Each message stored as a dead letter on arrival, with its error."""
    _write([{"hook": "on_dead_letter", "partition": r.partition, "error": r.error} for r in records])
