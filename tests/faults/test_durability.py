"""``SEQPROC_PUBLISH_DURABILITY``: ``async`` returns once the primary holds a push; ``replica`` once a replica has it
too (``WAIT 1``), and raises :class:`PublishError` (maybe sent, carrying the receipts) when none acknowledges it
within ``SEQPROC_PUBLISH_TIMEOUT_S``. A primary and its replica (and sentinels) of the test's own; the replica
paused with SIGSTOP. Bounded: a few seconds."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import seqproc
import seqproc.aio
from seqproc.models.errors import PublishError
from seqproc.models.settings import Settings
from seqproc.models.wire import queue_name
from tests.faults.servers import SentinelGroup

pytestmark = [pytest.mark.services, pytest.mark.timeout(90)]

TIMEOUT_S = 1.0


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    servers = SentinelGroup(tmp_path / "sentinel", port_offset=10).start()
    yield servers
    servers.stop()


def on(group: SentinelGroup, clean: Settings, durability: str) -> Settings:
    settings = clean.model_copy(
        update={
            "broker_url": group.url(0),
            "result_backend": group.url(1),
            "publish_durability": durability,
            "publish_timeout_s": TIMEOUT_S,
        }
    )
    seqproc.configure(settings)
    return settings


def queued(port: int, partition: int) -> int:
    return int(redis.Redis(port=port, socket_timeout=2).llen(queue_name(partition)))


def test_replica_durability_returns_once_a_replica_has_the_push_and_raises_with_the_receipt_when_none_answers(
    clean: Settings, group: SentinelGroup
) -> None:
    on(group, clean, "replica")
    primary, replica = group.master_port(), group.replica_port()
    assert primary is not None
    first = seqproc.like(1, 1)
    assert queued(replica, first.partition) == 1  # returned only once the replica held it
    group.signal_replica(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(PublishError) as caught:
            seqproc.like(1, 2)
        took_s = time.monotonic() - started
        aio_started = time.monotonic()
        with pytest.raises(PublishError) as caught_aio:
            asyncio.run(seqproc.aio.like(1, 3))
        aio_took_s = time.monotonic() - aio_started
    finally:
        group.signal_replica(signal.SIGCONT)
    for error, seconds in ((caught.value, took_s), (caught_aio.value, aio_took_s)):
        assert seconds < TIMEOUT_S + 1.0  # within the publish timeout: never hangs
        assert error.maybe_sent
        assert "may still be applied" in str(error)
        assert "SEQPROC_PUBLISH_DURABILITY=replica" in str(error)
        assert error.receipt is not None
        assert error.receipt.partition == first.partition
    assert caught.value.receipt.idempotency_key != caught_aio.value.receipt.idempotency_key
    # It reached the primary all the same (and the replica, once it runs again).
    assert queued(primary, first.partition) == 3


def test_async_durability_does_not_wait_for_the_replica(clean: Settings, group: SentinelGroup) -> None:
    on(group, clean, "async")
    group.signal_replica(signal.SIGSTOP)
    try:
        started = time.monotonic()
        receipts = [seqproc.like(2, user) for user in range(1, 21)]
        took_s = time.monotonic() - started
    finally:
        group.signal_replica(signal.SIGCONT)
    assert took_s < TIMEOUT_S
    primary = group.master_port()
    assert primary is not None
    assert queued(primary, receipts[0].partition) == 20
