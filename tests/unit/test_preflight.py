"""Before a worker claims anything: each service it needs answers, or it stops with one line naming the variables
(passwords masked), within a bound; and its database must be migrated to this seqproc's schema."""

from __future__ import annotations

import time

import pytest
from alembic import command
from sqlalchemy import text

from seqproc.migrations import alembic_config, behind, migrate
from seqproc.models.db import make_engine
from seqproc.models.errors import ServiceUnavailable
from seqproc.models.settings import Settings
from seqproc.worker.preflight import preflight
from tests.conftest import free_port


def test_unreachable_services_are_named_in_one_line_with_passwords_masked() -> None:
    broker, database, backend = free_port(), free_port(), free_port()
    settings = Settings(
        broker_url=f"redis://:hunter2@127.0.0.1:{broker}/0",
        database_url=f"postgresql://seqproc:hunter2@127.0.0.1:{database}/seqproc",
        result_backend=f"redis://127.0.0.1:{backend}/1?password=hunter2",
    )
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        preflight(settings, timeout_s=2)
    assert time.monotonic() - started < 5  # the three are asked at once, each within its timeout
    message = str(caught.value)
    assert caught.value.setting == "SEQPROC_BROKER_URL"
    assert "\n" not in message
    assert "hunter2" not in message
    assert message.index("SEQPROC_BROKER_URL: cannot reach redis://:***@127.0.0.1:") == 0
    assert f"SEQPROC_DATABASE_URL: cannot reach postgresql+psycopg://seqproc:***@127.0.0.1:{database}/" in message
    assert f"SEQPROC_RESULT_BACKEND: cannot reach redis://127.0.0.1:{backend}/1?password=***" in message
    assert message.endswith("the worker claimed no partition")


def test_a_memory_result_backend_and_a_sqlite_database_need_no_answer() -> None:
    broker = free_port()
    settings = Settings(
        broker_url=f"redis://127.0.0.1:{broker}/0", database_url="sqlite:///nowhere.db", result_backend="memory://"
    )
    with pytest.raises(ServiceUnavailable) as caught:
        preflight(settings, timeout_s=1)
    assert str(caught.value).count("cannot reach") == 1  # the broker only


def test_behind_tells_a_database_to_migrate_and_accepts_a_newer_one(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        current, head = behind(engine) or ("?", "?")
        assert current is None  # never migrated
        migrate(sqlite_url, revision="0005")
        assert behind(engine) == ("0005", head)
        command.upgrade(alembic_config(sqlite_url), "head")
        assert behind(engine) is None
        with engine.begin() as conn:  # written by a newer seqproc: its migrations add, so this one may run
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        assert behind(engine) is None
    finally:
        engine.dispose()


def test_a_broker_older_than_redis_6_2_is_refused_by_name() -> None:
    from seqproc.worker.preflight import redis_too_old

    assert redis_too_old(["6.2.0"]) is None
    assert redis_too_old(["7.0.15", "7.2.4"]) is None
    problem = redis_too_old(["7.0.15", "6.0.16"])  # a cluster: one old node is enough to refuse
    assert problem is not None
    assert problem.startswith("Redis 6.0.16 is too old")
    assert "6.2 or newer" in problem
    assert redis_too_old(["5.0.14"]) is not None
