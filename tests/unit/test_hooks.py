"""The lifecycle hooks' registry (``seqproc.worker.hooks``): what subscribes, what a failing hook does, and fault
injection left out unless the environment configures a fault."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, insert

from seqproc.models.errors import ConfigError
from seqproc.models.events import parse_event
from seqproc.models.outcomes import outcome_store
from seqproc.models.settings import Settings
from seqproc.models.tables.base import table_of
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker import faults, runtime
from seqproc.worker.consume.batching import Batcher, Held
from seqproc.worker.consume.decode import Decoded
from seqproc.worker.engine.apply import DeadLetterRecord
from seqproc.worker.hooks import HOOK_NAMES, Committed, FlushStarting, Hooks, Settled, user_subscribers
from tests.unit.test_retry import FakeMessage


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def after_settle(self, settled: Any) -> None:
        self.seen.append(settled)

    def not_a_hook(self, _: Any) -> None:
        raise AssertionError("not a hook: never subscribed")


def test_subscribe_takes_only_the_methods_named_after_hooks() -> None:
    hooks, recorder = Hooks(), Recorder()
    assert hooks.subscribe(recorder) == 1
    assert [len(getattr(hooks, name)) for name in HOOK_NAMES] == [0, 0, 1, 0]
    hooks.fire(hooks.after_settle, "batch")
    assert recorder.seen == ["batch"]


def test_a_failing_hook_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    hooks, recorder = Hooks(), Recorder()

    def broken(_: Any) -> None:
        raise RuntimeError("boom")

    hooks.add("after_settle", broken)
    hooks.subscribe(recorder)
    hooks.fire(hooks.after_settle, "batch")
    assert recorder.seen == ["batch"]
    assert "failed; the batch stands" in caplog.text
    assert "boom" in caplog.text
    with pytest.raises(ValueError, match="no hook 'after_flush'"):
        hooks.add("after_flush", broken)


def test_no_fault_configured_subscribes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.APPLY_DELAY_ENV, raising=False)
    monkeypatch.delenv(faults.EXIT_AFTER_COMMITS_ENV, raising=False)
    hooks = Hooks()
    faults.subscribe(hooks)
    assert not any(getattr(hooks, name) for name in HOOK_NAMES)
    monkeypatch.setenv(faults.APPLY_DELAY_ENV, "0.01")
    monkeypatch.setenv(faults.EXIT_AFTER_COMMITS_ENV, "3")
    faults.subscribe(hooks)
    assert (len(hooks.before_flush), len(hooks.after_commit)) == (1, 1)


def test_seqproc_hooks_names_modules_or_attributes() -> None:
    assert Settings(hooks="examples.audit_log.audit, tests.unit.test_hooks:RECORDER").hooks == (
        "examples.audit_log.audit",
        "tests.unit.test_hooks:RECORDER",
    )
    found = user_subscribers(["examples.audit_log.audit", "tests.unit.test_hooks:RECORDER"])
    assert [getattr(s, "__name__", s) for s in found] == ["examples.audit_log.audit", RECORDER]
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        user_subscribers(["no_such_module"])
    with pytest.raises(ConfigError, match="has no attribute 'MISSING'"):
        user_subscribers(["tests.unit.test_hooks:MISSING"])
    with pytest.raises(ConfigError, match="has none of the hooks"):
        user_subscribers(["tests.unit.test_hooks:Hooks"])


RECORDER = Recorder()


def test_the_batcher_fires_the_hooks_in_order_with_what_it_applied(sqlite_url: str, sqlite_engine: Engine) -> None:
    partition = partition_for(article_key(1), 16)
    with sqlite_engine.begin() as conn:
        conn.execute(insert(table_of(Partition)), [{"partition": p, "epoch": 5} for p in range(16)])
    settings = Settings(database_url=sqlite_url, broker_url="memory://", result_backend="memory://")
    rt = runtime.Runtime(settings, sqlite_engine, outcome_store("memory://", ttl_s=60), {partition: 5})
    like = {"type": "like", "key": "k1", "id": "e1", "stamp": 1001, "article_id": 1, "user_id": 7}
    again = {**like, "id": "e2", "stamp": 1002}  # the same idempotency key: a duplicate
    letter = DeadLetterRecord(error="not JSON", body="\x00", partition=partition, queue=queue_name(partition))
    messages = [FakeMessage(), FakeMessage()]
    held = [
        Held(messages[0], Decoded(partition, queue_name(partition), "task-1", [parse_event(like)])),
        Held(messages[1], Decoded(partition, queue_name(partition), "task-2", [parse_event(again)], [letter])),
    ]
    fired: list[tuple[str, Any]] = []

    class Everything:
        def before_flush(self, flush: FlushStarting) -> None:
            fired.append(("before_flush", flush))

        def after_commit(self, committed: Committed) -> None:
            fired.append(("after_commit", committed))

        def after_settle(self, settled: Settled) -> None:
            fired.append(("after_settle", settled, [m.acked for m in messages]))

        def on_dead_letter(self, records: Any) -> None:
            fired.append(("on_dead_letter", list(records)))

    rt.hooks.subscribe(Everything())
    Batcher(rt)._apply({partition: held})

    assert [entry[0] for entry in fired] == ["before_flush", "after_commit", "on_dead_letter", "after_settle"]
    assert fired[0][1] == FlushStarting((partition,), 2)
    [(batch, result)] = fired[1][1].batches
    assert (batch.partition, result.applied, result.duplicates) == (partition, 1, 1)
    assert fired[2][1] == [letter]
    _, settled, acked = fired[3]
    assert acked == [True, True]  # after the acks
    assert settled.partition == partition
    assert [o.status for o in settled.outcomes] == ["applied", "duplicate"]
    assert [(e.id, o.status) for e, o in settled.applied()] == [("e1", "applied")]
    assert [m.task_id for m in settled.messages] == ["task-1", "task-2"]
