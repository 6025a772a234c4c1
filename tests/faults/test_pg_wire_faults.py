"""Faults on the wire between a worker and PostgreSQL, and between the relay and PostgreSQL, through the TCP fault
proxy (``tests.faults.proxy``): the connection black-holed (both directions, or one: half-open, nothing closed), a
``COMMIT`` that reaches the server and whose reply never comes back, every live connection reset (RST), added
latency; then healed. The outbox stream of ``test_outbox_faults`` flows meanwhile (writers committing and rolling
back, a relay, a worker); only the process under test reaches PostgreSQL through the proxy.

Each test proves that its fault landed (the proxy's counters: bytes dropped, the ``COMMIT`` that set off the black
hole, connections reset and accepted again, a round trip slowed), that the process noticed within its bound
(``SEQPROC_APPLY_TIME_LIMIT_S`` + ``SEQPROC_DATABASE_SOCKET_TIMEOUT_S`` for a connection gone silent, at once for a
reset) and said so in its log, that it works again soon after the heal (a worker holds its leased partitions again
within ``SEQPROC_LEASE_S``), and prints a FAULT line whose model (what the writers committed, against the ledger and
the tables) shows nothing lost, doubled or reordered. Bounded: one fault of a few seconds, about 20 s each.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import redis
from sqlalchemy import Engine, func, make_url, select

from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.worker.ownership.leases import lease_key
from tests.conftest import LoggedProcess, RelayProcess, WorkerProcess, wait_for
from tests.faults.landing import unacked_count
from tests.faults.proxy import FaultProxy
from tests.faults.servers import fault_ports
from tests.faults.test_outbox_faults import app_engine, outbox_stream

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

__all__ = ["app_engine"]  # a fixture, used by name

#: The process behind the proxy: its statements' time limit and its socket timeout make a reply deadline of 2 s...
LIMIT_S = 1.0
SOCKET_S = 1.0
DEADLINE_S = LIMIT_S + SOCKET_S
#: ... its connect timeout is libpq's least (2 s), and it tries again at most a second apart.
CONNECT_S = 2.0
BACKOFF_S = 1.0
#: A worker's partitions are leased (``--partitions auto``) for this long, renewed every third of it from the loop
#: that a silent database holds up.
LEASE_S = 15.0
#: The stream flows this long before the fault, the fault holds this long (past a deadline and a connect timeout:
#: the process reconnects into the fault and meets it again), and the stream flows this long after the heal.
BEFORE_S = 1.5
HOLD_S = 5.0
AFTER_S = 1.5
#: Scheduling and polling on a loaded two-core machine.
SLACK_S = 1.5
#: After the heal, the attempt in flight ends by its deadline (or its connect timeout), then one pause at most.
RESUME_BOUND_S = max(DEADLINE_S, CONNECT_S) + BACKOFF_S + SLACK_S
#: The longest fault a worker rides out with its leases: renewed a third of a lease before the fault at worst, then
#: not again until the loop is free (the fault, the attempt in flight, a pause), and a lease lasts a lease.
KEEPS_LEASES_S = LEASE_S * 2 / 3 - RESUME_BOUND_S

NO_REPLY = "no reply from the database"
#: What a worker or relay logs when a round trip to its database failed, whatever the cause.
NOTICED = (NO_REPLY, "transient error", "heartbeat not recorded", "partition ownership:", "relay pass failed")
PARTITIONS = 16


@pytest.fixture
def proxy(pg_url: str) -> Iterator[FaultProxy]:
    running = FaultProxy(make_url(pg_url).port or 5432, fault_ports(1, variable="SEQPROC_TEST_PROXY_PORT_BASE")[0])
    yield running.start()
    running.stop()


def via(url: str, proxy: FaultProxy) -> str:
    """``url`` through the proxy."""
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@dataclass
class Measured:
    """What a run saw of its fault."""

    injected: int = 0
    #: From the fault to the first log line of the process saying that a round trip failed (None: it said nothing).
    noticed_s: float | None = None
    #: From the heal to the first event applied after it.
    resumed_s: float | None = None
    #: From the heal to the worker holding every partition's lease again (the worker path)...
    leases_back_s: float | None = None
    #: ... which it lost meanwhile (their leases ran out while its database did not answer) this many times.
    leases_lost: int = 0
    #: Messages the worker held unacknowledged while the fault held (its batch in doubt).
    unacked_in_fault: int = 0
    #: What the process logged from the fault on.
    log: str = ""


class Tail:
    """What a process logs from now on."""

    def __init__(self, process: LoggedProcess) -> None:
        self.process = process
        self.offset = len(process.log())

    def text(self) -> str:
        return self.process.log()[self.offset :]


def applied(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one())


def lease_holders(broker: redis.Redis) -> list[bytes | None]:
    return broker.mget([lease_key(p) for p in range(PARTITIONS)])


def start_behind(
    path: str,
    clean: Settings,
    proxy: FaultProxy,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> LoggedProcess:
    """Start the worker (``--partitions auto``) or the relay with its database connection through ``proxy``, and the
    other one directly; the one behind the proxy."""
    limits = {"apply_time_limit_s": LIMIT_S, "database_socket_timeout_s": SOCKET_S, "retry_backoff_max_s": BACKOFF_S}
    proxied = via(clean.database_url, proxy)
    if path == "worker":
        worker = start_worker(clean.model_copy(update={**limits, "database_url": proxied, "lease_s": LEASE_S}), "auto")
        broker = redis.Redis.from_url(clean.broker_url)
        wait_for(lambda: len(set(lease_holders(broker))) == 1 and lease_holders(broker)[0], 20, "every lease held")
        start_relay(clean)
        return worker
    # The relay's outbox (the same database) through the proxy; its ledger (seqproc's database) directly.
    relay = start_relay(clean.model_copy(update={**limits, "outbox_database_url": proxied}))
    start_worker(clean)
    return relay


def under_fault(
    path: str,
    clean: Settings,
    engine: Engine,
    app: Engine,
    proxy: FaultProxy,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
    *,
    inject: Callable[[FaultProxy], int],
    fault: str,
    hold_s: float = HOLD_S,
) -> Measured:
    """Run the outbox stream with ``path``'s process behind ``proxy``; ``inject`` the fault mid-stream (returning
    how many it injected), hold it ``hold_s``, heal, and let the stream finish and drain (the FAULT line, and its
    assertions, are ``outbox_stream``'s)."""
    behind = start_behind(path, clean, proxy, start_worker, start_relay)
    broker = redis.Redis.from_url(clean.broker_url)
    holders = lease_holders(broker)
    measured = Measured()

    def disrupt() -> int:
        time.sleep(BEFORE_S)
        tail = Tail(behind)
        started = time.monotonic()
        # Beside the watch: an injection that takes a while (resets one after another) is watched from its start.
        injecting = ThreadPoolExecutor(1).submit(inject, proxy)
        while time.monotonic() < started + hold_s or not injecting.done():
            if measured.noticed_s is None and any(marker in tail.text() for marker in NOTICED):
                measured.noticed_s = time.monotonic() - started
            if path == "worker":
                measured.unacked_in_fault = max(measured.unacked_in_fault, unacked_count(broker))
            time.sleep(0.05)
        measured.injected = injecting.result()
        at_heal = applied(engine)
        proxy.heal()
        healed = time.monotonic()
        wait_for(lambda: applied(engine) > at_heal, 30, "an event applied after the heal")
        measured.resumed_s = time.monotonic() - healed
        if path == "worker":
            wait_for(lambda: lease_holders(broker) == holders, 30, "the worker holding every lease again")
            measured.leases_back_s = time.monotonic() - healed
        time.sleep(AFTER_S)
        measured.log = tail.text()
        measured.leases_lost = measured.log.count("lease lost")
        return measured.injected

    outbox_stream(clean, app, engine, disrupt=disrupt, finish=lambda: None, fault=fault, min_events=300)
    print(
        f"{fault}: noticed {_s(measured.noticed_s)} after the fault, applying again {_s(measured.resumed_s)} after "
        f"the heal{leases(measured)}; no-reply lines {measured.log.count(NO_REPLY)}; proxy dropped {proxy.dropped},"
        f" delayed {proxy.delayed}, accepted {proxy.accepted}"
    )
    # Back to work once the attempt in flight at the heal has given up (its deadline), after one pause at most...
    assert measured.resumed_s is not None
    assert measured.resumed_s <= RESUME_BOUND_S, measured.resumed_s
    if path == "worker" and hold_s <= KEEPS_LEASES_S:
        # ... and a worker whose database was away for less than that never lost a partition...
        assert measured.leases_lost == 0, measured.log[-3000:]
    elif measured.leases_back_s is not None:
        # ... or, away longer (its leases ran out: other workers may take its partitions over), holds them all
        # again within a lease of applying again.
        assert measured.leases_lost > 0
        assert measured.leases_back_s - measured.resumed_s <= LEASE_S, measured
    return measured


#: ``wire(path, inject=..., fault=..., hold_s=...)``: :func:`under_fault` on the test's fixtures.
Run = Callable[..., Measured]


@pytest.fixture
def wire(
    clean: Settings,
    engine: Engine,
    app_engine: Engine,
    proxy: FaultProxy,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> Run:
    return functools.partial(
        under_fault,
        clean=clean,
        engine=engine,
        app=app_engine,
        proxy=proxy,
        start_worker=start_worker,
        start_relay=start_relay,
    )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def leases(measured: Measured) -> str:
    if measured.leases_back_s is None:
        return ""
    return (
        f"; {measured.leases_lost} lease(s) lost, all held {_s(measured.leases_back_s)} after the heal; "
        f"{measured.unacked_in_fault} message(s) held unacknowledged in the fault"
    )


def black_hole(*, up: bool, down: bool) -> Callable[[FaultProxy], int]:
    def inject(proxy: FaultProxy) -> int:
        proxy.black_hole(up=up, down=down)
        return 1

    return inject


def lost_commit_reply(proxy: FaultProxy) -> int:
    """The next ``COMMIT`` reaches the server; then the replies are dropped (its own first)."""
    proxy.black_hole_after(b"COMMIT\x00")
    wait_for(lambda: proxy.triggered, 5, "a COMMIT through the proxy")
    return proxy.triggered


def resets(times: int, *, every_s: float = 0.5, reconnect_within_s: float = 10.0) -> Callable[[FaultProxy], int]:
    """``times`` resets, ``every_s`` apart, each once the process holds a connection again (on a loaded machine its
    retry pause may outlast ``every_s``: a reset of nothing would prove nothing); one it never reopens within
    ``reconnect_within_s`` leaves that reset unmade, which the test's count shows."""

    def inject(proxy: FaultProxy) -> int:
        cut = 0
        for _ in range(times):
            deadline = time.monotonic() + reconnect_within_s
            while proxy.connections == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            cut += proxy.cut()
            time.sleep(every_s)
        return cut

    return inject


def slow_link(delay_s: float) -> Callable[[FaultProxy], int]:
    """Every chunk forwarded ``delay_s`` late, each way."""

    def inject(proxy: FaultProxy) -> int:
        proxy.latency(delay_s)
        return 1

    return inject


PATHS = ["worker", "relay"]


def assert_noticed_by_deadline(measured: Measured) -> None:
    """A connection gone silent was noticed within its reply deadline (or sooner), by the deadline's own line."""
    assert measured.noticed_s is not None
    assert measured.noticed_s <= DEADLINE_S + SLACK_S, measured.noticed_s
    assert NO_REPLY in measured.log


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("up", "down"),
    [
        pytest.param(True, True, id="both"),
        pytest.param(True, False, id="up", marks=pytest.mark.slow),
        pytest.param(False, True, id="down", marks=pytest.mark.slow),
    ],
)
def test_a_database_connection_gone_half_open_is_noticed_by_the_deadline_and_the_stream_recovers(
    wire: Run,
    proxy: FaultProxy,
    path: str,
    up: bool,
    down: bool,
) -> None:
    """Black-holed ``both`` ways (a partition), ``up`` only (requests lost: the server sees nothing, or ends a
    session left idle in its transaction and says so), or ``down`` only (requests run, replies lost): the process
    notices within the deadline, reconnects into the fault and meets it again, and works again once healed."""
    directions = "both ways" if up and down else ("client -> server" if up else "server -> client")
    measured = wire(
        path,
        inject=black_hole(up=up, down=down),
        fault=f"{path} <-> PostgreSQL half-open ({directions}) {HOLD_S:g} s mid-stream",
    )
    # Requests were dropped; replies too where the server had some to send (both ways, it had none: nothing reached it).
    assert proxy.dropped["up" if up else "down"] > 0, proxy.dropped
    assert measured.noticed_s is not None
    assert measured.noticed_s <= DEADLINE_S + SLACK_S, measured.noticed_s
    if down:  # nothing came back: only the deadline could tell (up only, the server may end the session first)
        assert NO_REPLY in measured.log


@pytest.mark.slow
def test_a_worker_whose_database_stays_half_open_past_its_lease_takes_its_partitions_back(
    wire: Run,
    proxy: FaultProxy,
) -> None:
    """Black-holed both ways for longer than a lease: the worker's leases run out (its loop waits on the database,
    and nothing renews them: other workers, had there been any, would have taken its partitions over). Healed, it
    applies again, and holds every partition again within a lease of that."""
    measured = wire(
        "worker",
        inject=black_hole(up=True, down=True),
        fault=f"worker <-> PostgreSQL half-open (both ways) {LEASE_S + 3:g} s, past its {LEASE_S:g} s lease",
        hold_s=LEASE_S + 3,
    )
    assert measured.leases_lost > 0


@pytest.mark.parametrize("path", PATHS)
def test_a_commit_whose_reply_is_lost_is_not_applied_twice(
    wire: Run,
    proxy: FaultProxy,
    path: str,
) -> None:
    """A ``COMMIT`` reaches the server, and from then on no reply comes back: the process cannot know whether its
    transaction committed. The worker holds its batch unacknowledged (nothing is acked before a commit is known),
    tries it again after the heal, and the ledger reports its events as duplicates; the relay sends again what it
    may not have recorded, and the ledger makes copies duplicates. Nothing is lost or doubled."""
    measured = wire(
        path,
        inject=lost_commit_reply,
        fault=f"{path} <-> PostgreSQL: a COMMIT's reply lost, then half-open {HOLD_S:g} s",
    )
    assert proxy.triggered == 1
    assert proxy.dropped["down"] > 0, proxy.dropped
    assert_noticed_by_deadline(measured)
    if path == "worker":
        # The batch whose COMMIT was in doubt stayed unacknowledged, and came back duplicate: it had committed.
        assert measured.unacked_in_fault > 0
        assert "outcome=duplicate" in measured.log


@pytest.mark.parametrize("path", PATHS)
def test_database_connections_reset_mid_stream_are_replaced_at_once(
    wire: Run,
    proxy: FaultProxy,
    path: str,
) -> None:
    """Every live connection through the proxy reset (RST), six times half a second apart: each reset is noticed
    on the connection's next use (never waited out), and the process opens new ones."""
    accepted = proxy.accepted
    measured = wire(
        path,
        inject=resets(6),
        fault=f"{path} <-> PostgreSQL connections reset (RST) x6 mid-stream",
        hold_s=3.5,
    )
    assert measured.injected >= 6  # every reset found live connections
    # Noticed on the next use of a connection (the worker's next transaction; the relay's next pass, or its pool's
    # pre-ping, which replaces the connection without a word), never by the deadline.
    assert measured.noticed_s is None or measured.noticed_s < DEADLINE_S, measured.noticed_s
    assert proxy.accepted - accepted >= 6  # ... and the process connected again after each
    assert NO_REPLY not in measured.log
    if path == "worker":  # no pre-ping: the reset surfaces as a transaction's error, retried in place
        assert "transient error" in measured.log


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "delay_s",
    [pytest.param(0.05, id="50ms"), pytest.param(2.5, id="past-the-deadline", marks=pytest.mark.slow)],
)
def test_a_slow_database_link_times_out_only_past_the_deadline(
    wire: Run,
    proxy: FaultProxy,
    path: str,
    delay_s: float,
) -> None:
    """Every chunk delayed ``delay_s`` each way. Below the deadline the stream only slows: no round trip is given
    up on. Past it (each reply later than the deadline), the link counts as dead, as a half-open one does, and the
    stream resumes once it is fast again."""
    measured = wire(
        path,
        inject=slow_link(delay_s),
        fault=f"{path} <-> PostgreSQL latency {delay_s * 1000:g} ms each way, {HOLD_S:g} s mid-stream",
    )
    assert proxy.delayed > 0  # the process's own round trips went through the slow link
    if delay_s < DEADLINE_S / 2:
        assert measured.noticed_s is None, measured.log[-2000:]
    else:
        assert_noticed_by_deadline(measured)
