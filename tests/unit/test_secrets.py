"""Secrets come from the environment or from a file the settings name, and are never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import ConfigError
from models.settings import load_settings, mask_url

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-p4ss"


def test_a_url_with_its_password_can_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "database_url"
    secret_file.write_text(f"postgresql://app:{SECRET}@db:5432/seqproc\n")
    monkeypatch.setenv("SEQPROC_DATABASE_URL", "postgresql://ignored@elsewhere/x")
    monkeypatch.setenv("SEQPROC_DATABASE_URL_FILE", str(secret_file))
    settings = load_settings()
    assert settings.database_url == f"postgresql+psycopg://app:{SECRET}@db:5432/seqproc"  # the file wins
    assert SECRET not in str(settings.masked())


def test_an_unreadable_secret_file_names_the_variable_not_the_content(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQPROC_BROKER_URL_FILE", "/nonexistent/broker")
    with pytest.raises(ConfigError, match="SEQPROC_BROKER_URL_FILE: cannot read '/nonexistent/broker'"):
        load_settings()


def test_passwords_are_masked_in_urls() -> None:
    assert mask_url(f"redis://:{SECRET}@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url(f"postgresql+psycopg://app:{SECRET}@db/x") == "postgresql+psycopg://app:***@db/x"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


def test_no_command_output_shows_a_password(tmp_path: Path) -> None:
    """Nothing listens on port 1: `seqproc settings` prints, a failing `enqueue` and `show` report errors; the
    password appears in none of it."""
    env = dict(os.environ)
    env["SEQPROC_DATABASE_URL"] = f"postgresql://app:{SECRET}@127.0.0.1:1/x"
    env["SEQPROC_BROKER_URL"] = f"redis://:{SECRET}@127.0.0.1:1/0"
    env["SEQPROC_RESULT_BACKEND"] = f"redis://:{SECRET}@127.0.0.1:1/1"
    env["SEQPROC_PUBLISH_TIMEOUT_S"] = "1"
    for args in (["settings"], ["enqueue", "like", "1", "2"], ["show", "article", "1"], ["partitions", "set", "4"]):
        run = subprocess.run(
            [sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert SECRET not in run.stdout + run.stderr, args
        assert "Traceback" not in run.stderr, args
        if args != ["settings"]:
            assert run.returncode == 5, (args, run.stderr)  # the named code for "a service is unreachable"
    bad = subprocess.run(
        [sys.executable, "-m", "worker", "settings"],
        cwd=ROOT,
        env=dict(env, SEQPROC_DATABASE_URL=f"mysql://app:{SECRET}@h/x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 3
    assert SECRET not in bad.stderr
