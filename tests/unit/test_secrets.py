"""Secrets come from the environment or from a file the settings name, and are never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqproc.models.errors import ConfigError
from seqproc.models.settings import load_settings, mask_url, mask_url_list

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


def test_passwords_in_the_query_string_are_masked() -> None:
    assert mask_url(f"redis://h:6379/0?password={SECRET}") == "redis://h:6379/0?password=***"
    assert mask_url(f"postgresql://app@db/x?sslmode=require&password={SECRET}") == (
        "postgresql://app@db/x?sslmode=require&password=***"
    )
    assert mask_url(f"redis://:{SECRET}@h/0?db=2&pass={SECRET}") == "redis://:***@h/0?db=2&pass=***"


@pytest.mark.parametrize(
    "value",
    [
        f"redis://:{SECRET}@h:6379/0,http://:{SECRET}2@x/",  # comma-separated
        f'["redis://:{SECRET}@h:6379/0", "http://:{SECRET}2@x/"]',  # a JSON list
        f"redis://:{SECRET}@h:6379/0 , redis://h/0?password={SECRET}2,ftp://x",
        f"redis://:{SECRET[:4]},{SECRET[4:]}@h/0,http://x",  # a comma inside the password splits it
        f'["redis://:{SECRET}@h/0", ',  # not even JSON
    ],
)
def test_a_bad_list_setting_is_shown_with_every_entry_masked(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SEQPROC_LOCK_URLS", value)
    with pytest.raises(ConfigError, match=r"^SEQPROC_LOCK_URLS: ") as caught:
        load_settings()
    assert SECRET not in str(caught.value)
    assert SECRET[:4] not in str(caught.value)
    assert SECRET[4:] not in str(caught.value)
    assert "***" in str(caught.value)


def test_a_list_setting_is_masked_entry_by_entry() -> None:
    assert mask_url_list(f"redis://:{SECRET}@a/0,http://:{SECRET}@b/") == "redis://:***@a/0,http://:***@b/"
    assert mask_url_list([f"redis://:{SECRET}@a/0", "redis://b/0"]) == "redis://:***@a/0,redis://b/0"
    assert mask_url_list(f"redis://u:{SECRET[:4]},{SECRET[4:]}@a/0") == "***"
    assert mask_url_list([1, 2]) == "***"


#: Every command that reads the settings and reaches a service; all of them fail to connect (port 1).
COMMANDS = (
    ["enqueue", "like", "1", "2"],
    ["show", "article", "1"],
    ["partitions", "set", "4"],
    ["status"],
    ["deadletter", "list"],
)


@pytest.mark.parametrize("where", ["user info", "query string"])
def test_no_command_output_shows_a_password(where: str) -> None:
    """Nothing listens on port 1: `seqproc settings` prints, the other commands report errors; the password
    appears in none of it, whether it sits in a URL's user info or in its query string."""
    env = dict(os.environ)
    if where == "user info":
        env["SEQPROC_DATABASE_URL"] = f"postgresql://app:{SECRET}@127.0.0.1:1/x"
        env["SEQPROC_RESULT_BACKEND"] = f"redis://:{SECRET}@127.0.0.1:1/1"
        env["SEQPROC_LOCK_URLS"] = f"redis://:{SECRET}@127.0.0.1:1/0,redis://:{SECRET}@127.0.0.1:2/0"
    else:
        env["SEQPROC_DATABASE_URL"] = f"postgresql://app@127.0.0.1:1/x?password={SECRET}"
        env["SEQPROC_RESULT_BACKEND"] = f"redis://127.0.0.1:1/1?password={SECRET}"
        env["SEQPROC_LOCK_URLS"] = f'["redis://127.0.0.1:1/0?password={SECRET}"]'
    env["SEQPROC_BROKER_URL"] = f"redis://:{SECRET}@127.0.0.1:1/0"  # kombu takes it from the user info only
    env["SEQPROC_PUBLISH_TIMEOUT_S"] = "1"
    for args in (["settings"], *COMMANDS):
        run = subprocess.run(
            [sys.executable, "-m", "seqproc", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert SECRET not in run.stdout + run.stderr, args
        assert "Traceback" not in run.stderr, args
        if args != ["settings"]:
            assert run.returncode == 5, (args, run.stderr)  # the named code for "a service is unreachable"
        else:
            assert run.returncode == 0, run.stderr
            assert "***" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "seqproc", "settings"],
        cwd=ROOT,
        env=dict(env, SEQPROC_DATABASE_URL=f"mysql://app:{SECRET}@h/x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 3
    assert SECRET not in bad.stderr
