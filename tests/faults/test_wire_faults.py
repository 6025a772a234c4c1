"""Faults on the wire, through a TCP fault proxy (``tests.faults.proxy``): a connection cut (RST), gone half-open
(one direction black-holed, or both, nothing closed), then healed.

- Between a producer and its broker, bounded by ``SEQPROC_PUBLISH_TIMEOUT_S``: a call raises ``PublishError`` within
  it or returns, never hangs.
- Between a worker and its broker (every connection of the worker through the proxy; the producer and the result
  backend direct), bounded by ``SEQPROC_BROKER_SOCKET_TIMEOUT_S``: the worker notices within about one socket
  timeout, reconnects once the network heals, takes its partitions back within its lease, and a stream of events
  sent all along is applied with nothing lost, doubled or reordered.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine

import seqproc
from seqproc import producer
from seqproc.models.errors import PublishError
from seqproc.models.settings import Settings
from seqproc.models.wire import lease_key, queue_name
from seqproc.worker.ops.inspect import check_invariants, product_state
from tests.conftest import BROKER_DB, wait_for
from tests.faults.proxy import FaultProxy
from tests.faults.servers import fault_ports
from tests.faults.test_restarts import RESTOCKED, assert_all_applied_in_order, chains, report_sequences

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

#: The worker's socket timeout and lease in the worker tests: short, so that a test takes seconds; the lease well
#: above the socket timeout, as the defaults are (5 s and 10 s).
WORKER_SOCKET_TIMEOUT_S = 2.0
WORKER_LEASE_S = 6.0
#: How long the worker tests hold the fault: past the lease, so that the worker's leases run out meanwhile.
WORKER_FAULT_S = WORKER_LEASE_S + 2.0
#: A loaded two-core machine's delay on top of a bound (a turn of the event loop, the log read by polling).
SLACK_S = 1.5

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


def leases_held(client: redis.Redis, pid: int, partitions: int) -> int:
    """How many partition leases in the broker name the worker process ``pid`` (its owner token holds ``/pid/``)."""
    values = client.mget([lease_key(queue_name(p)) for p in range(partitions)])
    return sum(1 for value in values if value is not None and f"/{pid}/".encode() in value)


@pytest.mark.parametrize(("up", "down"), [(True, True), (True, False), (False, True)], ids=["both", "up", "down"])
def test_a_worker_whose_broker_goes_half_open_notices_reconnects_and_loses_nothing(
    clean: Settings, proxy: FaultProxy, start_worker, engine: Engine, up: bool, down: bool
) -> None:
    """A ``--partitions auto`` worker talks to its broker only through the proxy, which black-holes ``both``
    directions, ``up`` (client -> server: nothing arrives) or ``down`` (server -> client: commands run, replies
    are lost: a fetch moves messages to ``unacked`` and the worker never hears of them) for longer than the lease,
    then heals; per-product reserve/release chains and one-unit restocks (``tests.faults.test_restarts``) are sent
    all along, straight to Redis. The worker logs ``broker unresponsive`` within ``1 s`` + the socket timeout
    (read from its log as it comes), reconnects after the heal and holds all its leases again within one lease;
    every event is applied once, in its key's order, judged against what was sent (every chain step applied, every
    unit received once)."""
    settings = through(
        clean, proxy, broker_socket_timeout_s=WORKER_SOCKET_TIMEOUT_S, lease_s=WORKER_LEASE_S
    )  # the producer stays on ``clean``: straight to Redis
    broker = redis.Redis.from_url(clean.broker_url)
    worker = start_worker(settings, "auto")
    wait_for(lambda: leases_held(broker, worker.pid, clean.partitions) == clean.partitions, 20, "all 16 leases")
    products = [11, 12, 13]  # a few keys (and RESTOCKED): several partitions, each key's order checked
    with chains(products) as (receipts, units):
        wait_for(lambda: len(receipts) > 100, 10, "the stream under way")
        mark = len(worker.log())
        proxy.black_hole(up=up, down=down)
        faulted_at = time.monotonic()
        wait_for(lambda: "broker unresponsive" in worker.log()[mark:], 20, "the worker to notice")
        noticed_s = time.monotonic() - faulted_at
        time.sleep(max(0.0, WORKER_FAULT_S - noticed_s))
        assert leases_held(broker, worker.pid, clean.partitions) < clean.partitions  # held past the lease
        proxy.heal()
        healed_at = time.monotonic()
        wait_for(
            lambda: leases_held(broker, worker.pid, clean.partitions) == clean.partitions,
            WORKER_LEASE_S + SLACK_S,
            "the worker to hold all its leases again",
        )
        back_s = time.monotonic() - healed_at
        time.sleep(1.0)  # events after the heal, too
    outcomes = producer.wait_all(receipts, timeout_s=30)
    label = {(True, True): "both ways", (True, False): "client->server", (False, True): "server->client"}[(up, down)]
    report_sequences(
        f"worker <-> broker half-open {label} for {WORKER_FAULT_S:g} s, then healed (noticed in {noticed_s:.1f} s, "
        f"leases back {back_s:.1f} s after the heal)",
        outcomes,
        len(receipts),
        engine,
        len(products),
        units[0],
    )
    # The fault landed: the worker's commands were dropped (``up``), or ran and their replies were (``down``); and
    # the worker said so within the bound.
    assert (proxy.dropped["up"] > 0) == up, proxy.dropped
    if not up:
        assert proxy.dropped["down"] > 0, proxy.dropped
    assert noticed_s < 1.0 + WORKER_SOCKET_TIMEOUT_S + SLACK_S
    assert "Connection to broker lost" in worker.log()[mark:]  # Celery's reconnect, not a process restart
    assert worker.process.poll() is None
    assert len(outcomes) > 200
    assert_all_applied_in_order(outcomes)
    with engine.connect() as conn:
        for product in products:
            state = product_state(conn, product)
            assert (state["available"], state["reserved"], state["total_received"]) == (1, 0, 1)
        assert product_state(conn, RESTOCKED)["total_received"] == units[0]
        assert check_invariants(conn).ok
