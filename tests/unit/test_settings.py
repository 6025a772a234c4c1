"""Typed settings: defaults, environment parsing, one-line errors naming the variable, masked passwords."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from seqproc.models.errors import ConfigError, SeqprocError
from seqproc.models.settings import Settings, get_settings, load_settings, mask_url

ROOT = Path(__file__).resolve().parents[2]
SEQPROC = Path(sys.executable).with_name("seqproc")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No SEQPROC_* variable of the developer's shell leaks into these tests; the cached settings are dropped."""
    for name in list(os.environ):
        if name.startswith("SEQPROC_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_point_at_local_services() -> None:
    settings = load_settings()
    assert settings.partitions == 16
    database = urlsplit(settings.database_url)
    assert database.scheme == "postgresql+psycopg"
    assert (database.hostname, database.port) == ("127.0.0.1", 5432)
    for url in (settings.broker_url, settings.result_backend):
        parts = urlsplit(url)
        assert parts.scheme == "redis"
        assert (parts.hostname, parts.port) == ("127.0.0.1", 6379)
    assert settings.broker_url != settings.result_backend
    assert settings.dedup_window_days == 7
    assert not settings.embedded


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQPROC_PARTITIONS", "32")
    monkeypatch.setenv("SEQPROC_BROKER_URL", "memory://")
    monkeypatch.setenv("SEQPROC_RESULT_BACKEND", "redis://cache:6380/3")
    monkeypatch.setenv("SEQPROC_DATABASE_URL", "sqlite:////tmp/seqproc.db")
    monkeypatch.setenv("SEQPROC_BATCH_SIZE", "50")
    monkeypatch.setenv("SEQPROC_DEDUP_WINDOW_DAYS", "1.5")
    monkeypatch.setenv("SEQPROC_TASK_EVENTS", "false")
    monkeypatch.setenv("SEQPROC_LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.partitions == 32
    assert settings.broker_url == "memory://"
    assert settings.embedded
    assert settings.result_backend == "redis://cache:6380/3"
    assert settings.database_url == "sqlite:////tmp/seqproc.db"
    assert settings.batch_size == 50
    assert settings.dedup_window_days == 1.5
    assert settings.task_events is False
    assert settings.log_level == "DEBUG"


def test_get_settings_reads_once_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQPROC_PARTITIONS", "8")
    assert get_settings().partitions == 8
    monkeypatch.setenv("SEQPROC_PARTITIONS", "4")
    assert get_settings().partitions == 8
    get_settings.cache_clear()
    assert get_settings().partitions == 4


def test_postgresql_url_gets_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQPROC_DATABASE_URL", "postgresql://app:pw@db:5432/seqproc")
    assert load_settings().database_url == "postgresql+psycopg://app:pw@db:5432/seqproc"
    monkeypatch.setenv("SEQPROC_DATABASE_URL", "postgresql+psycopg://app@db/seqproc")
    assert load_settings().database_url == "postgresql+psycopg://app@db/seqproc"


def test_postgres_scheme_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQPROC_DATABASE_URL", "postgres://app:pw@db:5432/seqproc")
    assert load_settings().database_url == "postgresql+psycopg://app:pw@db:5432/seqproc"


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("SEQPROC_PARTITIONS", "0", None),
        ("SEQPROC_PARTITIONS", "-3", None),
        ("SEQPROC_PARTITIONS", "2000", None),
        ("SEQPROC_PARTITIONS", "abc", None),
        ("SEQPROC_PARTITIONS", "", None),
        ("SEQPROC_BATCH_SIZE", "0", None),
        ("SEQPROC_DEDUP_WINDOW_DAYS", "0", None),
        ("SEQPROC_LOG_LEVEL", "loud", None),
        ("SEQPROC_DATABASE_URL", "mysql://app:hunter2@db/seqproc", "hunter2"),
        ("SEQPROC_DATABASE_URL", "not a url", None),
        ("SEQPROC_BROKER_URL", "http://user:hunter2@broker/", "hunter2"),
        ("SEQPROC_BROKER_URL", "kafka://broker:9092", None),
        ("SEQPROC_RESULT_BACKEND", "amqp://user:hunter2@rabbit//", "hunter2"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, secret: str | None
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert isinstance(caught.value, SeqprocError)
    assert isinstance(caught.value, ValueError)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message
    assert "(got " in message
    if secret is not None:
        assert secret not in message
        assert "***" in message


def test_two_bad_values_are_both_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQPROC_PARTITIONS", "0")
    monkeypatch.setenv("SEQPROC_BROKER_URL", "http://broker")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "SEQPROC_PARTITIONS" in message
    assert "SEQPROC_BROKER_URL" in message
    assert "\n" not in message


@pytest.mark.parametrize(("visibility_s", "apply_s"), [("19", "10"), ("5", "2.6"), ("30", "15.5")])
def test_visibility_timeout_below_twice_the_apply_time_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch, visibility_s: str, apply_s: str
) -> None:
    """A message redelivered while its batch is still being applied would break order: refused at start."""
    monkeypatch.setenv("SEQPROC_VISIBILITY_TIMEOUT_S", visibility_s)
    monkeypatch.setenv("SEQPROC_APPLY_TIME_LIMIT_S", apply_s)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("SEQPROC_VISIBILITY_TIMEOUT_S: must be >= 2 * SEQPROC_APPLY_TIME_LIMIT_S")
    assert f"(got {visibility_s} and {apply_s})" in message
    assert "\n" not in message


@pytest.mark.parametrize(("visibility_s", "apply_s"), [(20, 10), (30, 10), (5, 2.5), (86_400, 3_600)])
def test_visibility_timeout_of_twice_the_apply_time_limit_or_more_is_accepted(
    visibility_s: int, apply_s: float
) -> None:
    settings = load_settings(visibility_timeout_s=visibility_s, apply_time_limit_s=apply_s)
    assert settings.visibility_timeout_s >= 2 * settings.apply_time_limit_s


def test_cli_reports_the_cross_field_rule_in_one_line_and_exits_3() -> None:
    done = _run_cli("settings", SEQPROC_VISIBILITY_TIMEOUT_S="15", SEQPROC_APPLY_TIME_LIMIT_S="10")
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "SEQPROC_VISIBILITY_TIMEOUT_S" in lines[0]
    assert "SEQPROC_APPLY_TIME_LIMIT_S" in lines[0]
    assert done.stdout == ""


def test_a_broker_password_as_a_query_parameter_is_refused_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kombu takes the password from the user info only (``?password=`` crashes it): refused at start."""
    monkeypatch.setenv("SEQPROC_BROKER_URL", "redis://127.0.0.1:6379/0?password=hunter2")
    with pytest.raises(ConfigError, match="SEQPROC_BROKER_URL: must carry its password as") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    assert "password=***" in str(caught.value)


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="SEQPROC_PARTITIONS"):
        load_settings(partitions=0)
    assert load_settings(partitions=64).partitions == 64


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("postgresql+psycopg://app:p%40ss@db:5432/seqproc", "postgresql+psycopg://app:***@db:5432/seqproc"),
        ("redis://:pa@ss@host/0", "redis://:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("redis://host:6379/0?password=secret", "redis://host:6379/0?password=***"),
        ("redis://host/0?db=1&PassWord=secret&x=y", "redis://host/0?db=1&PassWord=***&x=y"),
        (
            "postgresql://app@db/x?sslmode=require&sslpassword=secret",
            "postgresql://app@db/x?sslmode=require&sslpassword=***",
        ),
        ("redis://:secret@host/0?pass=secret", "redis://:***@host/0?pass=***"),
        ("redis://host/0?db=1&timeout=5", "redis://host/0?db=1&timeout=5"),
        ("redis://user:secret@[::1/0", "***"),  # does not parse (an unclosed bracket), may hold a password
        ("memory://", "memory://"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("sentinel://:secret@a:1;sentinel://:secret@b:2/0", "sentinel://:***@a:1;sentinel://:***@b:2/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_masked_settings_hide_every_password() -> None:
    settings = Settings(
        database_url="postgresql://app:dbsecret@db/seqproc",
        broker_url="redis://:brokersecret@redis:6379/0",
        result_backend="redis://:resultsecret@redis:6379/1",
    )
    shown = json.dumps(settings.masked())
    for secret in ("dbsecret", "brokersecret", "resultsecret"):
        assert secret not in shown
    assert settings.masked()["broker_url"] == "redis://:***@redis:6379/0"
    assert settings.masked()["partitions"] == 16
    # Only the printed form is masked: the settings themselves keep the password.
    assert "brokersecret" in settings.broker_url


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert SEQPROC.exists(), f"console script not installed at {SEQPROC}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEQPROC_")}
    return subprocess.run(
        [str(SEQPROC), *args], env=clean | env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SEQPROC_PARTITIONS", "abc"), ("SEQPROC_PARTITIONS", "0"), ("SEQPROC_DATABASE_URL", "mysql://a:hunter2@db/x")],
)
def test_cli_reports_bad_setting_in_one_line_and_exits_3(variable: str, value: str) -> None:
    done = _run_cli("settings", **{variable: value})
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert variable in lines[0]
    assert lines[0].startswith("seqproc: ConfigError: ")
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr
    assert done.stdout == ""


def test_cli_prints_masked_settings() -> None:
    done = _run_cli(
        "settings",
        SEQPROC_PARTITIONS="8",
        SEQPROC_BROKER_URL="redis://:topsecret@127.0.0.1:6379/0",
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["partitions"] == 8
    assert shown["broker_url"] == "redis://:***@127.0.0.1:6379/0"
    assert "topsecret" not in done.stdout


def test_a_sentinel_url_lists_its_sentinels_and_ends_with_a_database() -> None:
    url = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380/0"
    assert Settings(broker_url=url, result_backend=url).broker_url == url
    with pytest.raises(ValueError, match="every part sentinel://"):
        Settings(broker_url="sentinel://127.0.0.1:26379;redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="database number"):
        Settings(result_backend="sentinel://127.0.0.1:26379/x")
