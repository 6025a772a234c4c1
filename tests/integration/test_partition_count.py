"""The partition count, checked everywhere: producers (blocking, asyncio, the outbox writers), the relay and
``seqproc status`` refuse another ``SEQPROC_PARTITIONS`` than the deployment's, and send or write nothing; ``seqproc
migrate`` and the workers publish the count; after ``seqproc partitions set`` the processes started before refuse
until they are restarted with the new count."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import seqproc
from seqproc import producer
from seqproc.models.errors import PartitionCountMismatch
from seqproc.models.settings import Settings
from seqproc.models.wire import PARTITION_COUNT_KEY, article_key, partition_for, queue_name
from seqproc.worker.cli.codes import RET_CONFIG
from seqproc.worker.outbox_identity import outbox_id
from seqproc.worker.ownership.partitions import publish_partition_count, set_partition_count
from seqproc.worker.relay import Relay
from tests.conftest import ROOT, WorkerProcess, settings_env, wait_for

pytestmark = pytest.mark.services

#: The deployment's count (the test database records it); the producers under test are given another.
DEPLOYED, OTHER = 16, 8


@pytest.fixture
def deployed(clean: Settings, engine: Engine) -> Iterator[redis.Redis]:
    """The deployment's count published in the broker and in the outbox database, as `seqproc migrate` does."""
    client = redis.Redis.from_url(clean.broker_url)
    assert publish_partition_count(engine, DEPLOYED, client=client, outbox=engine) == DEPLOYED
    yield client
    client.close()


def queued(client: redis.Redis) -> list[str]:
    """The partition queues that hold anything (and their bells)."""
    return sorted(key.decode() for key in client.keys("seqproc.*"))


def outbox_keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT ledger_key FROM seqproc_outbox ORDER BY id")).scalars())


def assert_names_both_counts(error: PartitionCountMismatch) -> None:
    message = str(error)
    assert f"SEQPROC_PARTITIONS is {OTHER} but" in message
    assert f"set up with {DEPLOYED} partitions" in message
    assert f"set SEQPROC_PARTITIONS={DEPLOYED}" in message  # what to do
    assert f"`seqproc partitions set {OTHER}`" in message


def seqproc_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqproc", *args],
        cwd=ROOT,
        env=settings_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_producer_with_another_count_refuses_and_sends_nothing(clean: Settings, deployed: redis.Redis) -> None:
    producer.configure(clean.model_copy(update={"partitions": OTHER}))
    with pytest.raises(PartitionCountMismatch) as refused:
        seqproc.like(1, 1)
    assert_names_both_counts(refused.value)
    with pytest.raises(PartitionCountMismatch):
        seqproc.connect()
    with pytest.raises(PartitionCountMismatch):
        seqproc.send_many([{"type": "like", "article_id": 2, "user_id": u} for u in range(1, 6)])
    # Calls that share a send (the coalescer's leader sends for the others): each hears the mismatch itself.
    with ThreadPoolExecutor(8) as pool:
        errors = list(pool.map(lambda user: _error_of(lambda: seqproc.like(3, user)), range(1, 33)))
    assert all(isinstance(error, PartitionCountMismatch) for error in errors), errors
    assert queued(deployed) == []
    producer.configure(clean)  # the deployment's count: sent
    seqproc.like(1, 1)
    queue = queue_name(partition_for(article_key(1), DEPLOYED))
    assert queue in queued(deployed)


def _error_of(call: Callable[[], object]) -> BaseException | None:
    try:
        call()
    except Exception as error:
        return error
    return None


def test_an_asyncio_producer_with_another_count_refuses_and_sends_nothing(
    clean: Settings, deployed: redis.Redis
) -> None:
    async def calls() -> list[BaseException | seqproc.Receipt]:
        with pytest.raises(PartitionCountMismatch) as refused:
            await seqproc.aio.like(1, 1)
        assert_names_both_counts(refused.value)
        return await asyncio.gather(*(seqproc.aio.like(2, user) for user in range(1, 17)), return_exceptions=True)

    producer.configure(clean.model_copy(update={"partitions": OTHER}))
    results = asyncio.run(calls())
    assert all(isinstance(result, PartitionCountMismatch) for result in results), results
    assert queued(deployed) == []


def test_the_outbox_writers_with_another_count_write_nothing(
    clean: Settings, engine: Engine, deployed: redis.Redis
) -> None:
    """Checked by the insert itself, in the caller's transaction, which stays usable: the application may go on."""
    producer.configure(clean.model_copy(update={"partitions": OTHER}))
    likes = [{"type": "like", "article_id": 4, "user_id": u} for u in (1, 2)]
    with engine.begin() as conn:
        with pytest.raises(PartitionCountMismatch) as refused:
            seqproc.outbox.like(conn, 4, 1)
        assert_names_both_counts(refused.value)
        with pytest.raises(PartitionCountMismatch):
            seqproc.outbox.send_many(conn, likes)
        assert conn.execute(text("SELECT 1")).scalar() == 1
    with Session(engine) as session, session.begin(), pytest.raises(PartitionCountMismatch):
        seqproc.outbox.like(session, 4, 2)
    with psycopg.connect(clean.database_url.replace("+psycopg", "")) as conn:
        with pytest.raises(PartitionCountMismatch):
            seqproc.outbox.send_many(conn, likes)
        assert conn.execute("SELECT 1").fetchone() == (1,)

    async def asynchronous() -> None:
        async_engine = create_async_engine(clean.outbox_url)
        try:
            async with AsyncSession(async_engine) as session, session.begin():
                with pytest.raises(PartitionCountMismatch):
                    await seqproc.aio.outbox.send_many(session, likes)
        finally:
            await async_engine.dispose()
        async with await psycopg.AsyncConnection.connect(clean.outbox_url.replace("+psycopg", "")) as conn:
            with pytest.raises(PartitionCountMismatch):
                await seqproc.aio.outbox.like(conn, 4, 3)

    asyncio.run(asynchronous())
    assert outbox_keys(engine) == []
    producer.configure(clean)
    with engine.begin() as conn:
        written = seqproc.outbox.send_many(conn, likes)
    assert outbox_keys(engine) == [f"like:{r.idempotency_key}" for r in written]
    assert queued(deployed) == []  # the outbox writers never talk to the broker


def test_status_with_another_count_refuses_with_the_workers_message(clean: Settings, deployed: redis.Redis) -> None:
    refused = seqproc_cli(clean, "status", "--interval", "0", SEQPROC_PARTITIONS=str(OTHER))
    assert refused.returncode == RET_CONFIG, refused.stdout
    assert refused.stdout == ""
    assert f"PartitionCountMismatch: SEQPROC_PARTITIONS is {OTHER} but this database was set up with" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0
    assert seqproc_cli(clean, "status", "--interval", "0").returncode == 0


def test_migrate_and_a_starting_worker_publish_the_databases_count(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    client = redis.Redis.from_url(clean.broker_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE seqproc_outbox_meta SET value = '3' WHERE name = 'partition_count'"))
        conn.execute(text("DELETE FROM seqproc_outbox_meta WHERE name = 'outbox_id'"))  # deleted by hand
    migrated = seqproc_cli(clean, "migrate", SEQPROC_PARTITIONS=str(OTHER))
    assert migrated.returncode == 0, migrated.stderr
    assert f"partition count {DEPLOYED} (published in the broker)" in migrated.stdout
    # The database's count is published, not the variable's; the variable's mismatch is a warning.
    assert f"warning: SEQPROC_PARTITIONS is {OTHER} but this database was set up with {DEPLOYED}" in migrated.stderr
    assert client.get(PARTITION_COUNT_KEY) == str(DEPLOYED).encode()
    with engine.connect() as conn:
        copied = conn.execute(text("SELECT value FROM seqproc_outbox_meta WHERE name = 'partition_count'")).scalar()
    assert copied == str(DEPLOYED)
    assert len(outbox_id(engine)) == 32  # made again: the relays need it
    client.flushdb()  # a broker emptied since: the next worker to start publishes it again
    start_worker(clean, "0-15")
    assert client.get(PARTITION_COUNT_KEY) == str(DEPLOYED).encode()


def test_after_partitions_set_the_processes_started_before_refuse_until_restarted(
    clean: Settings, engine: Engine, deployed: redis.Redis
) -> None:
    """``seqproc partitions set`` closes the producers' connections: the next call reconnects, reads the new count
    and refuses; the outbox writers' insert sees the new count at once; a running relay stops. Restarted with the
    new count, they work."""
    seqproc.like(1, 1)  # a producer started before: connected, checked
    relay = Relay(clean, engine, engine, deployed)

    async def on_one_loop() -> None:
        await seqproc.aio.like(1, 2)  # this loop's connection, checked
        await asyncio.to_thread(deployed.flushdb)  # as if the workers drained the queues
        await asyncio.to_thread(set_partition_count, engine, deployed, OTHER, outbox=engine)
        with pytest.raises(PartitionCountMismatch, match=f"SEQPROC_PARTITIONS is {DEPLOYED} but .* {OTHER} partitions"):
            await seqproc.aio.like(1, 3)
        with pytest.raises(PartitionCountMismatch):
            seqproc.like(1, 4)

    try:
        asyncio.run(on_one_loop())
        assert queued(deployed) == []
        with engine.begin() as conn, pytest.raises(PartitionCountMismatch):
            seqproc.outbox.like(conn, 1, 5)
        assert outbox_keys(engine) == []
        with pytest.raises(PartitionCountMismatch, match=f"SEQPROC_PARTITIONS is {DEPLOYED} but"):
            relay.tick()
        restarted = clean.model_copy(update={"partitions": OTHER})
        producer.configure(restarted)
        seqproc.like(1, 6)
        assert queue_name(partition_for(article_key(1), OTHER)) in queued(deployed)
        with engine.begin() as conn:
            seqproc.outbox.like(conn, 1, 7)
        assert Relay(restarted, engine, engine, deployed).tick().sent == 1
    finally:
        producer.configure(clean)
        deployed.flushdb()
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM seqproc_outbox"))
        set_partition_count(engine, deployed, DEPLOYED, outbox=engine)
    wait_for(lambda: seqproc.like(1, 8), 10, "the producer back on the deployment's count")
