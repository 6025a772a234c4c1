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

import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from sqlalchemy import Engine, select

import seqproc
from seqproc import producer
from seqproc.models.broker_watch import BrokerUnresponsive, BrokerWatch
from seqproc.models.errors import PublishError
from seqproc.models.resp import ReplyLost
from seqproc.models.settings import Settings
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import lease_key, queue_name
from seqproc.worker.ops.inspect import check_invariants, product_state
from tests.conftest import BROKER_DB, WorkerProcess, wait_for
from tests.faults.proxy import FaultProxy
from tests.faults.servers import fault_ports
from tests.faults.test_restarts import RESTOCKED, assert_all_applied_in_order, chains, report_sequences
from tests.integration.test_transport import connection

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


#: The defaults the worker runs with: the socket timeout, and the lease.
DEFAULT_TIMEOUTS = (
    Settings.model_fields["broker_socket_timeout_s"].default,
    Settings.model_fields["lease_s"].default,
)


@pytest.mark.parametrize(
    ("up", "down", "timeouts"),
    [
        pytest.param(True, True, (WORKER_SOCKET_TIMEOUT_S, WORKER_LEASE_S), id="both"),
        # ``up`` (nothing arrives) is what ``both`` does to a worker, whose commands then get no reply either;
        # ``both-defaults`` is ``both`` with the longer default timeouts: under ``make soak`` only.
        pytest.param(True, False, (WORKER_SOCKET_TIMEOUT_S, WORKER_LEASE_S), id="up", marks=pytest.mark.slow),
        pytest.param(False, True, (WORKER_SOCKET_TIMEOUT_S, WORKER_LEASE_S), id="down"),
        pytest.param(True, True, DEFAULT_TIMEOUTS, id="both-defaults", marks=pytest.mark.slow),
    ],
)
def test_a_worker_whose_broker_goes_half_open_notices_reconnects_and_loses_nothing(
    clean: Settings,
    proxy: FaultProxy,
    start_worker,
    engine: Engine,
    up: bool,
    down: bool,
    timeouts: tuple[float, float],
) -> None:
    """A ``--partitions auto`` worker talks to its broker only through the proxy, which black-holes ``both``
    directions, ``up`` (client -> server: nothing arrives) or ``down`` (server -> client: commands run, replies
    are lost: a fetch moves messages to ``unacked`` and the worker never hears of them) for longer than the lease,
    then heals; per-product reserve/release chains and one-unit restocks (``tests.faults.test_restarts``) are sent
    all along, straight to Redis. The worker logs ``broker unresponsive`` within ``1 s`` + the socket timeout
    (read from its log as it comes), reconnects after the heal and holds all its leases again within one lease;
    every event is applied once, in its key's order, judged against what was sent (every chain step applied, every
    unit received once). ``both-defaults``: the same with the defaults (a 5 s socket timeout, a 10 s lease); the
    others with 2 s and 6 s, for time."""
    socket_timeout_s, lease_s = timeouts
    fault_s = lease_s + 2.0  # past the lease: the worker's leases run out meanwhile
    # The producer stays on ``clean``: straight to Redis.
    settings = through(clean, proxy, broker_socket_timeout_s=socket_timeout_s, lease_s=lease_s)
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
        time.sleep(max(0.0, fault_s - noticed_s))
        assert leases_held(broker, worker.pid, clean.partitions) < clean.partitions  # held past the lease
        proxy.heal()
        healed_at = time.monotonic()
        wait_for(
            lambda: leases_held(broker, worker.pid, clean.partitions) == clean.partitions,
            lease_s + SLACK_S,
            "the worker to hold all its leases again",
        )
        back_s = time.monotonic() - healed_at
        time.sleep(1.0)  # events after the heal, too
    outcomes = producer.wait_all(receipts, timeout_s=30)
    label = {(True, True): "both ways", (True, False): "client->server", (False, True): "server->client"}[(up, down)]
    report_sequences(
        f"worker <-> broker half-open {label} for {fault_s:g} s (socket timeout {socket_timeout_s:g} s, lease "
        f"{lease_s:g} s), then healed (noticed in {noticed_s:.1f} s, leases back {back_s:.1f} s after the heal)",
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
    assert noticed_s < 1.0 + socket_timeout_s + SLACK_S
    assert "Connection to broker lost" in worker.log()[mark:]  # Celery's reconnect, not a process restart
    assert worker.process.poll() is None
    assert_chains_applied(outcomes, engine, products, units[0])


def assert_chains_applied(outcomes: list[producer.Outcome], engine: Engine, products: list[int], units: int) -> None:
    """What :func:`chains` sent (a stream of more than 200 events), judged against the model: every event applied
    once, in its key's order; each product back to its one unit; every restocked unit received once; the tables'
    invariants hold."""
    assert len(outcomes) > 200
    assert_all_applied_in_order(outcomes)
    with engine.connect() as conn:
        for product in products:
            state = product_state(conn, product)
            assert (state["available"], state["reserved"], state["total_received"]) == (1, 0, 1)
        assert product_state(conn, RESTOCKED)["total_received"] == units
        assert check_invariants(conn).ok


def received(engine: Engine, product: int) -> int:
    with engine.connect() as conn:
        return int(product_state(conn, product)["total_received"])


def raises_unresponsive(call: Callable[[], object]) -> bool:
    try:
        call()
    except BrokerUnresponsive:
        return True
    return False


def test_a_silent_broker_is_noticed_by_a_command_or_by_the_wait_on_the_bells_and_fails_every_channel_at_once(
    clean: Settings, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The two ways a worker's channels notice a broker gone half-open, on seqproc's transport through the proxy
    (socket timeout 1 s), and what follows. The wait on the bells (a ``BRPOP`` with a 1 s server-side timeout, and
    no socket timeout of its own) counts as dead once its timeout plus the socket timeout passed without a reply,
    not before. Once the watch is marked, every channel sharing it fails at once, without waiting out another
    timeout. A fetch sent with no reply within the socket timeout marks it too."""
    settings = through(clean, proxy, broker_socket_timeout_s=1)
    queue = queue_name(3)
    watch = BrokerWatch()
    with connection(settings, broker_watch=watch) as conn, connection(settings, broker_watch=watch) as other:
        channel, elsewhere = conn.default_channel, other.default_channel
        channel._active_queues.append(queue)
        channel._update_queue_cycle()
        assert channel._fetch([queue], 1) == []  # the held connection open (a handshake would time out instead)
        wait = channel.client.connection = channel.client.connection_pool.get_connection()  # as kombu's poller does
        wait.connect()
        channel._brpop_start()  # the wait on the bells, sent
        proxy.black_hole()
        started = time.monotonic()
        wait_for(lambda: raises_unresponsive(channel.check_responsive), 10, "the wait on the bells counted dead")
        noticed_s = time.monotonic() - started
        assert 2.0 - 0.1 < noticed_s < 2.0 + SLACK_S  # not before its 1 s plus the socket timeout's 1 s
        assert "broker unresponsive" in caplog.text
        assert "the wait on the bells" in caplog.text
        for call in (lambda: channel._fetch([queue], 1), lambda: elsewhere._size(queue)):
            started = time.monotonic()
            with pytest.raises(BrokerUnresponsive):
                call()
            assert time.monotonic() - started < 0.1  # at once: no second timeout waited out
        watch.clear()
        started = time.monotonic()
        with pytest.raises(ReplyLost):  # sent, no reply within the socket timeout...
            channel._fetch([queue], 1)
        assert 1.0 - 0.1 < time.monotonic() - started < 1.0 + SLACK_S
        assert watch.silent is not None  # ... and the watch says so again
        proxy.heal()
        watch.clear()  # (the worker clears it once it has reconnected)
        assert channel._fetch([queue], 1) == []  # a new connection, through the healed network
        channel._in_poll.disconnect()  # the wait's reply was lost: the close must not wait for it
        channel._in_poll = None


def test_an_idle_worker_with_fixed_partitions_notices_a_silent_broker_and_resumes_after_the_heal(
    clean: Settings, proxy: FaultProxy, start_worker, engine: Engine
) -> None:
    """A worker of fixed partitions (``--partitions 0-15``) with nothing to do: only its wait on the bells, kombu's
    restores and Celery's heartbeat talk to the broker when both directions go black. It notices within ``1 s`` +
    the socket timeout all the same, keeps its partitions (their epochs do not move: nobody else claimed them),
    applies what was sent during the fault once the network heals (within a lease), in order, nothing lost or
    doubled."""
    settings = through(clean, proxy, broker_socket_timeout_s=WORKER_SOCKET_TIMEOUT_S, lease_s=WORKER_LEASE_S)
    worker = start_worker(settings)
    with engine.connect() as conn:
        before = dict(conn.execute(select(Partition.partition, Partition.epoch)).all())
    time.sleep(1.0)  # idle: a wait on the bells every second, nothing fetched
    mark = len(worker.log())
    proxy.black_hole()
    faulted_at = time.monotonic()
    wait_for(lambda: "broker unresponsive" in worker.log()[mark:], 20, "the worker to notice")
    noticed_s = time.monotonic() - faulted_at
    products = [21, 22, 23]
    with chains(products) as (receipts, units):
        time.sleep(max(0.0, WORKER_FAULT_S - noticed_s))
        proxy.heal()
        healed_at = time.monotonic()
        wait_for(lambda: received(engine, products[0]), WORKER_LEASE_S + SLACK_S, "the first event applied")
        resumed_s = time.monotonic() - healed_at
        time.sleep(1.0)
    outcomes = producer.wait_all(receipts, timeout_s=30)
    report_sequences(
        f"idle worker (fixed partitions) <-> broker half-open both ways for {WORKER_FAULT_S:g} s, then healed "
        f"(noticed in {noticed_s:.1f} s, applying again {resumed_s:.1f} s after the heal)",
        outcomes,
        len(receipts),
        engine,
        len(products),
        units[0],
    )
    assert proxy.dropped["up"] > 0  # the fault landed: its waits, restores and heartbeats went nowhere
    assert noticed_s < 1.0 + WORKER_SOCKET_TIMEOUT_S + SLACK_S
    assert worker.process.poll() is None
    with engine.connect() as conn:
        assert dict(conn.execute(select(Partition.partition, Partition.epoch)).all()) == before
        for product in products:
            state = product_state(conn, product)
            assert (state["available"], state["reserved"], state["total_received"]) == (1, 0, 1)
        assert product_state(conn, RESTOCKED)["total_received"] == units[0]
    assert len(outcomes) > 100
    assert_all_applied_in_order(outcomes)


@pytest.mark.parametrize("partitions", ["auto", "0-15"])
def test_a_worker_stopped_while_its_broker_is_half_open_exits_without_waiting_for_it(
    clean: Settings, proxy: FaultProxy, start_worker, engine: Engine, partitions: str
) -> None:
    """SIGTERM while every connection to the broker is black-holed (an operator restarting a worker cut off): it
    applies nothing more, hands back what it can and exits within a few socket timeouts, not one per partition
    (each lease or fence left behind expires, or is overwritten by the next claim). Its partitions are marked
    released in PostgreSQL, which still answers."""
    settings = through(clean, proxy, broker_socket_timeout_s=WORKER_SOCKET_TIMEOUT_S, lease_s=WORKER_LEASE_S)
    worker = start_worker(settings, partitions)
    time.sleep(1.0)
    proxy.black_hole()
    worker.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    code = worker.process.wait(60)
    took_s = time.monotonic() - stopped_at
    print(f"stopped with the broker half-open ({partitions}): exited {code} in {took_s:.1f} s")
    assert proxy.dropped["up"] > 0  # the fault landed: what it sent on the way out went nowhere
    assert took_s < 4 * WORKER_SOCKET_TIMEOUT_S + SLACK_S
    with engine.connect() as conn:
        owners = conn.execute(select(Partition.owner, Partition.released_at)).all()
    assert all(released is not None for owner, released in owners if owner and f"/{worker.pid}/" in owner)


#: The new wire tests: how long the fault is held, and each test's bound (worker start and the wait included).
HOLD_S = 5.0
LATENCY_S = 0.05


def bounded_stream(test: Callable[..., None]) -> Callable[..., None]:
    """Bounded at 30 s; a sender that died of an exception (a ``PublishError``) fails the test instead of merely
    stopping the stream."""
    test = pytest.mark.timeout(30)(test)
    return pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")(test)


def start_auto_worker(clean: Settings, proxy: FaultProxy, start_worker) -> tuple[redis.Redis, WorkerProcess]:
    """A ``--partitions auto`` worker whose every broker connection goes through ``proxy`` (2 s socket timeout, 6 s
    lease), holding all its leases."""
    settings = through(clean, proxy, broker_socket_timeout_s=WORKER_SOCKET_TIMEOUT_S, lease_s=WORKER_LEASE_S)
    broker = redis.Redis.from_url(clean.broker_url)
    worker = start_worker(settings, "auto")
    wait_for(lambda: leases_held(broker, worker.pid, clean.partitions) == clean.partitions, 20, "all 16 leases")
    return broker, worker


@bounded_stream
def test_a_worker_whose_broker_connections_are_reset_mid_stream_reconnects_and_loses_nothing(
    clean: Settings, proxy: FaultProxy, start_worker, engine: Engine
) -> None:
    """Every live worker <-> Redis connection reset (RST) five times, a second apart, while reserve/release chains
    and restocks on a few keys are sent straight to Redis: each reset is seen at once (no socket timeout waited
    out), the worker connects again through the proxy after each, keeps or takes back its leases within one lease,
    and every event is applied once, in its key's order."""
    broker, worker = start_auto_worker(clean, proxy, start_worker)
    products = [31, 32, 33]
    accepted = proxy.accepted
    resets: list[int] = []
    with chains(products) as (receipts, units):
        wait_for(lambda: len(receipts) > 100, 10, "the stream under way")
        mark = len(worker.log())
        for _ in range(5):
            wait_for(lambda: proxy.connections > 0, 5, "the worker connected again")
            resets.append(proxy.cut())
            last_reset_at = time.monotonic()
            time.sleep(1.0)
        wait_for(
            lambda: leases_held(broker, worker.pid, clean.partitions) == clean.partitions,
            WORKER_LEASE_S + SLACK_S,
            "the worker to hold all its leases again",
        )
        back_s = time.monotonic() - last_reset_at
        time.sleep(1.0)  # events after the last reset, too
    outcomes = producer.wait_all(receipts, timeout_s=15)
    report_sequences(
        f"worker <-> broker connections reset (RST) x{len(resets)} mid-stream, a second apart ({sum(resets)} "
        f"connections reset, {proxy.accepted - accepted} reconnects; all leases held {back_s:.1f} s after the last)",
        outcomes,
        len(receipts),
        engine,
        len(products),
        units[0],
        injected=len(resets),
    )
    assert all(n >= 1 for n in resets), resets  # the fault landed: every reset found live connections...
    assert proxy.accepted - accepted >= len(resets)  # ... and the worker connected again after each
    assert worker.process.poll() is None  # Celery's reconnect, not a process restart
    assert "broker unresponsive" not in worker.log()[mark:]  # a reset is an error at once, not a silence
    assert_chains_applied(outcomes, engine, products, units[0])


@bounded_stream
def test_a_worker_whose_broker_link_is_slow_only_slows_down(
    clean: Settings, proxy: FaultProxy, start_worker, engine: Engine
) -> None:
    """50 ms added to every chunk each way between the worker and Redis for 5 s (far below the 2 s socket timeout),
    a stream on a few keys sent all along: the worker only slows down; it never counts the broker silent, never
    reconnects, never loses a lease; every event is applied once, in its key's order."""
    broker, worker = start_auto_worker(clean, proxy, start_worker)
    products = [41, 42, 43]
    with chains(products) as (receipts, units):
        wait_for(lambda: len(receipts) > 100, 10, "the stream under way")
        mark = len(worker.log())
        proxy.latency(LATENCY_S)
        time.sleep(HOLD_S)
        held = leases_held(broker, worker.pid, clean.partitions)
        proxy.heal()
        time.sleep(1.0)
    outcomes = producer.wait_all(receipts, timeout_s=15)
    report_sequences(
        f"worker <-> broker latency {LATENCY_S * 1000:g} ms each way, {HOLD_S:g} s mid-stream "
        f"({proxy.delayed} chunks delayed)",
        outcomes,
        len(receipts),
        engine,
        len(products),
        units[0],
    )
    assert proxy.delayed > 0  # the fault landed: the worker's round trips went through the slow link
    log = worker.log()[mark:]
    assert "broker unresponsive" not in log  # nothing timed out...
    assert "Connection to broker lost" not in log  # ... nor reconnected
    assert held == clean.partitions  # no lease lost while slow
    assert worker.process.poll() is None
    assert_chains_applied(outcomes, engine, products, units[0])


@bounded_stream
def test_a_producer_whose_broker_link_is_slow_returns_slower_and_raises_nothing(
    clean: Settings, proxy: FaultProxy, start_worker, engine: Engine
) -> None:
    """50 ms added to every chunk each way between the producer and Redis for 5 s (the worker direct): every call
    returns, later (a round trip is at least 100 ms), none raises ``PublishError``; the stream sent through it is
    applied once, in order."""
    worker = start_worker(clean, "auto")
    seqproc.configure(through(clean, proxy, publish_timeout_s=TIMEOUT_S))
    products = [51, 52, 53]
    with chains(products) as (receipts, units):
        wait_for(lambda: len(receipts) > 100, 10, "the stream under way")
        before = len(receipts)
        time.sleep(1.0)
        fast = len(receipts) - before
        proxy.latency(LATENCY_S)
        before = len(receipts)
        time.sleep(HOLD_S)
        slow = len(receipts) - before
        proxy.heal()
        time.sleep(1.0)
    outcomes = producer.wait_all(receipts, timeout_s=15)
    report_sequences(
        f"producer <-> broker latency {LATENCY_S * 1000:g} ms each way, {HOLD_S:g} s mid-stream "
        f"({proxy.delayed} chunks delayed; {fast}/s sent before, {slow / HOLD_S:.1f}/s during)",
        outcomes,
        len(receipts),
        engine,
        len(products),
        units[0],
    )
    assert proxy.delayed > 0  # the fault landed: the producer's pushes went through the slow link
    assert 0 < slow / HOLD_S < fast  # slower, never stuck (a PublishError would have failed the sender)
    assert slow / HOLD_S <= 1 / (2 * LATENCY_S) + 1  # one round trip at least per call
    assert worker.process.poll() is None
    assert_chains_applied(outcomes, engine, products, units[0])
