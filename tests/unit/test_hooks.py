"""The lifecycle hooks' registry (``seqproc.worker.hooks``): what subscribes, what a failing hook does, and fault
injection left out unless the environment configures a fault."""

from __future__ import annotations

from typing import Any

import pytest

from seqproc.models.errors import ConfigError
from seqproc.models.settings import Settings
from seqproc.worker import faults
from seqproc.worker.hooks import HOOK_NAMES, Hooks, user_subscribers


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
