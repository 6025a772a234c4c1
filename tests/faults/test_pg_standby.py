"""PostgreSQL failover mid-stream: a primary and its synchronous standby (``initdb``, ``pg_basebackup -R``) started by
the test on its own ports; workers, the relay and ``seqproc migrate`` reach them through a multi-host URL
(``?host=a:p1&host=b:p2&target_session_attrs=read-write``). The primary is killed with SIGKILL while outbox events
flow and the standby promoted: nothing lost, doubled or reordered. A worker acks its messages only after its commit,
and a synchronous standby has every commit that returned. Bounded: one kill, ~30 s."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from seqproc.models.db import make_engine
from seqproc.models.settings import Settings
from seqproc.worker.processes import settings_env
from tests.conftest import ROOT, RelayProcess, WorkerProcess
from tests.faults.servers import PostgresPair
from tests.faults.test_outbox_faults import APP_TABLE, outbox_stream

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    servers = PostgresPair().start()
    yield servers
    servers.stop()


def test_postgresql_primary_sigkill_with_a_synchronous_standby_promoted_mid_stream_loses_nothing(
    clean: Settings,
    pair: PostgresPair,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    with psycopg.connect(host="127.0.0.1", port=pair.ports[0], user="postgres", dbname="postgres") as conn:
        conn.autocommit = True
        conn.execute("CREATE DATABASE seqproc")
    settings = clean.model_copy(update={"database_url": pair.url("seqproc")})
    migrated = subprocess.run(
        [sys.executable, "-m", "seqproc", "migrate"],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
    )
    assert migrated.returncode == 0, migrated.stderr
    engine: Engine = make_engine(settings.database_url, pool_size=8)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {APP_TABLE} (id bigint PRIMARY KEY, writer int NOT NULL)"))
        start_worker(settings)
        start_relay(settings)

        def fail_over() -> int:
            time.sleep(2.0)
            pair.kill_primary()
            promoted_s = pair.promote()
            print(f"standby promoted in {promoted_s:.2f} s after the primary's SIGKILL")
            time.sleep(3.0)
            return 1

        outbox_stream(
            settings,
            engine,
            engine,
            disrupt=fail_over,
            finish=lambda: None,
            fault="PostgreSQL primary SIGKILL, synchronous standby promoted mid-stream (outbox + relay + worker)",
            min_events=300,
        )
        with engine.connect() as conn:
            assert conn.execute(text("SELECT inet_server_port()")).scalar_one() == pair.ports[1]
    finally:
        engine.dispose()
