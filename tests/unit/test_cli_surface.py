"""The command line as a user meets it: ``--version``, help without reStructuredText, ``bench -h``, readable values,
and a warning for a ``SEQPROC_*`` variable that no setting reads. No services."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import click
import pytest

from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings, load_settings, unknown_variables
from seqproc.worker.cli import cli
from seqproc.worker.cli.text import outcome_fields, plain
from seqproc.worker.processes import settings_env
from tests.conftest import ROOT


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqproc", *args],
        cwd=ROOT,
        env=settings_env(Settings(broker_url="memory://", result_backend="memory://"), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"seqproc {version('seqproc')}"


def every_command(command: click.Command, ctx: click.Context) -> Iterator[tuple[str, click.Command, click.Context]]:
    yield ctx.command_path, command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from every_command(sub, click.Context(sub, info_name=name, parent=ctx))


def test_no_help_text_shows_restructuredtext_markup() -> None:
    """Docstrings use ``literals`` and :class:`roles` for Sphinx; a terminal shows them raw."""
    seen = []
    for path, command, ctx in every_command(cli, click.Context(cli, info_name="seqproc")):
        text = command.get_help(ctx)
        if isinstance(command, click.Group):  # the one-line summaries of its commands
            subs = [command.get_command(ctx, name) for name in command.list_commands(ctx)]
            text += "".join(sub.get_short_help_str() for sub in subs if sub is not None)
        assert "``" not in text, (path, text)
        assert ":class:" not in text, path
        assert ":func:" not in text, path
        seen.append(path)
    assert {"seqproc enqueue like", "seqproc show account", "seqproc deadletter replay"} <= set(seen)


def test_plain_strips_literals_and_roles() -> None:
    assert plain("Credit ``amount`` to :class:`seqproc.Account`") == "Credit amount to seqproc.Account"


def test_bench_takes_dash_h_as_every_command_does() -> None:
    done = run("bench", "-h")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: seqproc bench [OPTIONS]")
    assert "--scenario" in done.stdout


def test_an_outcome_reads_as_fields_not_a_python_dict() -> None:
    duplicate = Outcome("duplicate", first=Outcome("rejected", "insufficient_stock"))
    assert outcome_fields(duplicate) == {
        "outcome": "duplicate",
        "first": "rejected",
        "first_reason": "insufficient_stock",
    }
    assert outcome_fields(Outcome("applied", "already_liked")) == {"outcome": "applied", "reason": "already_liked"}


def test_a_misspelled_variable_gets_the_closest_setting() -> None:
    assert unknown_variables({"SEQPROC_PARTITION": "8", "SEQPROC_DATABSE_URL_FILE": "/run/secrets/db"}) == [
        "SEQPROC_DATABSE_URL_FILE is not a seqproc setting and is ignored; did you mean SEQPROC_DATABASE_URL_FILE?",
        "SEQPROC_PARTITION is not a seqproc setting and is ignored; did you mean SEQPROC_PARTITIONS?",
    ]
    assert unknown_variables({"SEQPROC_NOTHING_LIKE_IT": "1"}) == [
        "SEQPROC_NOTHING_LIKE_IT is not a seqproc setting and is ignored; `seqproc settings` lists the settings"
    ]
    assert unknown_variables({"SEQPROC_PARTITIONS_FILE": "/x"})[0].startswith(
        "SEQPROC_PARTITIONS_FILE is ignored: only the settings that hold a secret can be read from a file"
    )


def test_the_variables_of_seqprocs_own_tools_pass_silently() -> None:
    own = {
        "SEQPROC_BROKER_URL_FILE": "/run/secrets/broker",  # a secret's file
        "SEQPROC_TEST_DATABASE_URL": "postgresql://h/x",  # the test suite
        "SEQPROC_FAULT_EXIT_AFTER_COMMITS": "3",  # the fault tests
        "SEQPROC_BENCH_DIR": "/src/bench",
        "SEQPROC_DJANGO_DATABASE": "seqproc",
        "SEQPROC_IMAGE": "seqproc:local",
        "OTHER_PREFIX_PARTITION": "8",
    }
    assert unknown_variables(own) == []
    assert unknown_variables(settings_env(Settings())) == []  # every setting, as the tools hand them to children


def test_load_settings_warns_once_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SEQPROC_PUBLISH_TIMEOUT", "3")  # missing its _S: ignored, so the default stands
    with caplog.at_level(logging.WARNING):
        settings = load_settings()
        load_settings()
    assert settings.publish_timeout_s == 10
    warned = [r.getMessage() for r in caplog.records if "SEQPROC_PUBLISH_TIMEOUT " in r.getMessage()]
    assert warned == [
        "SEQPROC_PUBLISH_TIMEOUT is not a seqproc setting and is ignored; did you mean SEQPROC_PUBLISH_TIMEOUT_S?"
    ]


def test_a_command_prints_the_warning_and_runs() -> None:
    done = run("settings", SEQPROC_BATCHSIZE="100")
    assert done.returncode == 0, done.stderr
    assert "SEQPROC_BATCHSIZE is not a seqproc setting and is ignored; did you mean SEQPROC_BATCH_SIZE?" in done.stderr
    assert '"batch_size": 500' in done.stdout
