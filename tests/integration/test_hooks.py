"""A user's worker hook (``SEQPROC_HOOKS``): the audit log of docs/hooks.md (``examples/audit_log``), loaded by a real
``seqproc worker``, writes exactly the events applied, with their outcomes, and the dead letter stored on arrival."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter
from seqproc.models.wire import article_key, bell_key, partition_for, queue_name
from tests.conftest import ROOT, WorkerProcess, wait_for
from tests.integration.test_example_wallet import INCLUDE

pytestmark = pytest.mark.services


def test_the_hooks_guide_includes_the_audit_example_verbatim() -> None:
    included = {m["path"]: m["code"] for m in INCLUDE.finditer((ROOT / "docs" / "hooks.md").read_text())}
    assert included == {"examples/audit_log/audit.py": (ROOT / "examples/audit_log/audit.py").read_text()}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_audit_hook_sees_the_applied_events_and_the_dead_letters(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    start_worker(clean, "0-15", SEQPROC_HOOKS="examples.audit_log.audit", SEQPROC_AUDIT_LOG=str(audit))
    article, other = 31, 32
    outcomes = [
        r.wait(timeout_s=20)
        for r in [
            producer.like(article, 1, idempotency_key="audit-1"),
            producer.like(article, 1, idempotency_key="audit-1"),  # a duplicate: not in the audit
            producer.like(article, 2),
            producer.like(article, 2),  # applied, "already_liked"
            producer.unlike(other, 5),  # applied, "not_liked"
            producer.reserve(7, 1, reservation_id="audit-r"),  # rejected: no such product
        ]
    ]
    assert [(o.status, o.reason) for o in outcomes] == [
        ("applied", None),
        ("duplicate", None),
        ("applied", None),
        ("applied", "already_liked"),
        ("applied", "not_liked"),
        ("rejected", "unknown_product"),
    ]
    part = partition_for(article_key(article), clean.partitions)
    client = redis.Redis.from_url(clean.broker_url)
    client.lpush(queue_name(part), b"\x00 not a message")
    client.lpush(bell_key(queue_name(part)), "1")

    wait_for(lambda: any(line["hook"] == "on_dead_letter" for line in lines(audit)), 20, "the dead letter's line")
    written = lines(audit)
    applied = [(line["type"], line["entity"], line["event"], line["reason"]) for line in written[:-1]]
    assert sorted(applied, key=repr) == sorted(
        [
            ("like", f"article:{article}", {"article_id": article, "user_id": 1}, None),
            ("like", f"article:{article}", {"article_id": article, "user_id": 2}, None),
            ("like", f"article:{article}", {"article_id": article, "user_id": 2}, "already_liked"),
            ("unlike", f"article:{other}", {"article_id": other, "user_id": 5}, "not_liked"),
        ],
        key=repr,
    )
    assert all(line["hook"] == "after_settle" for line in written[:-1])
    assert written[-1]["hook"] == "on_dead_letter"
    assert written[-1]["partition"] == part
    with engine.connect() as conn:  # the letter the hook saw is the one committed
        assert conn.execute(select(DeadLetter.error)).scalars().all() == [written[-1]["error"]]
    # Per key, the audit follows the order applied.
    users = [line["event"]["user_id"] for line in written if line.get("entity") == f"article:{article}"]
    assert users == [1, 2, 2]
