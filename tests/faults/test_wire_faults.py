"""Faults on the wire, through a TCP fault proxy (``tests.faults.proxy``): a connection cut (RST), gone half-open
(one direction black-holed, or both, nothing closed), then healed; between a producer and its broker,
bounded by ``SEQPROC_PUBLISH_TIMEOUT_S``: a call raises ``PublishError`` within it or returns, never hangs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

import seqproc
from seqproc.models.errors import PublishError
from seqproc.models.settings import Settings
from seqproc.models.wire import queue_name
from tests.conftest import BROKER_DB
from tests.faults.proxy import FaultProxy
from tests.faults.servers import fault_ports

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

TIMEOUT_S = 2.0


@pytest.fixture
def proxy(clean: Settings) -> Iterator[FaultProxy]:
    target = redis.Redis.from_url(clean.broker_url).connection_pool.connection_kwargs["port"]
    running = FaultProxy(int(target), fault_ports(1, variable="SEQPROC_TEST_PROXY_PORT_BASE")[0]).start()
    yield running
    running.stop()


def through(settings: Settings, proxy: FaultProxy, **update: object) -> Settings:
    return settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{proxy.port}/{BROKER_DB}", **update})


@pytest.mark.parametrize(("up", "down"), [(True, True), (True, False), (False, True)], ids=["both", "up", "down"])
def test_a_producer_whose_broker_goes_half_open_raises_within_the_publish_timeout(
    clean: Settings, proxy: FaultProxy, up: bool, down: bool
) -> None:
    """Black-holed ``both``/``up`` (the push never arrives) or ``down`` (it arrives and runs; the reply is lost):
    ``PublishError`` within ``SEQPROC_PUBLISH_TIMEOUT_S``, saying it may have been sent; after the heal, sending
    again with the same key works (the ledger would make a copy a duplicate)."""
    seqproc.configure(through(clean, proxy, publish_timeout_s=TIMEOUT_S))
    first = seqproc.like(1, 1)  # connected (redis-py's handshake done before the black hole)
    proxy.black_hole(up=up, down=down)
    started = time.monotonic()
    with pytest.raises(PublishError) as caught:
        seqproc.like(1, 2, idempotency_key=f"half-open-{up}-{down}")
    took_s = time.monotonic() - started
    proxy.heal()
    assert took_s < TIMEOUT_S + 1.0
    assert caught.value.maybe_sent  # written, no reply: it may have run (and with ``down`` it did)
    assert caught.value.receipt is not None
    queued = redis.Redis.from_url(clean.broker_url).llen(queue_name(first.partition))
    assert queued == (1 if up else 2)  # the first; and the push whose reply was dropped, which ran
    again = seqproc.like(1, 2, idempotency_key=f"half-open-{up}-{down}")  # healed: the same key goes through
    assert again.idempotency_key == f"half-open-{up}-{down}"


def test_a_producer_whose_connection_is_reset_sends_again_at_once(clean: Settings, proxy: FaultProxy) -> None:
    seqproc.configure(through(clean, proxy, publish_timeout_s=TIMEOUT_S))
    seqproc.like(2, 1)
    assert proxy.cut() >= 1
    started = time.monotonic()
    seqproc.like(2, 2)  # reconnects through the proxy (it still accepts): no error
    assert time.monotonic() - started < 1.0
