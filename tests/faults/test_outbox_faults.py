"""The transactional outbox under faults: transactions rolled back in the middle of a concurrent stream, the relay
killed with SIGKILL again and again, the broker's Redis killed and brought back without its last second of writes.
Among the committed events nothing is lost, doubled or reordered per key; nothing rolled back is ever applied.
Bounded: a few kills, a few seconds each."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

import seqproc
from seqproc.models.db import make_engine
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.models.tables.likes import ArticleLike
from seqproc.models.wire import queue_name
from seqproc.worker.faults import RELAY_PUSHED_DELAY_ENV
from seqproc.worker.ops.inspect import check_invariants, product_state
from seqproc.worker.ops.lag import outbox_depth
from seqproc.worker.relay import LOCK_NAMESPACE
from tests.conftest import PrivateRedis, RelayProcess, WorkerProcess, wait_for
from tests.faults.matrix import doubled_in_tables, report, units_doubled

pytestmark = pytest.mark.services

#: The application's own table, written in the same transactions as the outbox events.
APP_TABLE = "outbox_fault_order"


class Rollback(Exception):
    """Raised inside a writer's transaction after its events were written: the transaction must leave no trace."""


@dataclass
class Stream:
    """What the writers committed and rolled back: the model the database must match."""

    committed_keys: set[str] = field(default_factory=set)
    rolled_back_keys: set[str] = field(default_factory=set)
    committed_orders: set[int] = field(default_factory=set)
    rolled_back_orders: set[int] = field(default_factory=set)
    likes: dict[tuple[int, int], bool] = field(default_factory=dict)
    restocks: int = 0
    sequenced: list[seqproc.Receipt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def app_engine(clean: Settings) -> Iterator[Engine]:
    engine = make_engine(clean.database_url, pool_size=8)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {APP_TABLE} (id bigint PRIMARY KEY, writer int NOT NULL)"))
        conn.execute(text(f"TRUNCATE {APP_TABLE}"))
    yield engine
    engine.dispose()


def committed(app: Engine, order: int, timeout_s: float = 30) -> bool:
    """Whether the transaction that wrote ``order``'s row committed, once the database answers again: a connection
    lost mid-transaction (a failover) leaves the outcome unknown to the writer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with app.connect() as conn:
                row = conn.execute(text(f"SELECT 1 FROM {APP_TABLE} WHERE id = :id"), {"id": order}).first()
                return row is not None
        except DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def outbox_stream(
    settings: Settings,
    app: Engine,
    engine: Engine,
    *,
    disrupt: Callable[[], int],
    finish: Callable[[], None],
    fault: str,
    min_events: int = 1000,
) -> Stream:
    """Writers commit (and roll back, one transaction in five) their own row plus outbox events while ``disrupt``
    injects faults (returning how many); then ``finish`` makes sure a relay and a worker run, and everything
    committed must be applied exactly once, in order per key, and nothing rolled back at all."""
    seqproc.configure(settings)
    stream = Stream()
    stop = threading.Event()
    order_ids = iter(range(1, 10**9))
    ids_lock = threading.Lock()

    def write(thread: int) -> None:
        rng = random.Random(thread)
        users = [thread * 1000 + u for u in range(1, 30)]
        while not stop.is_set():
            with ids_lock:
                order = next(order_ids)
            rollback = rng.random() < 0.2
            pairs: dict[tuple[int, int], bool] = {}
            restocked = 0
            keys: list[str] = []
            try:
                with app.begin() as conn:
                    conn.execute(
                        text(f"INSERT INTO {APP_TABLE} (id, writer) VALUES (:id, :w)"), {"id": order, "w": thread}
                    )
                    for _ in range(rng.randint(1, 3)):
                        if rng.random() < 0.2:
                            receipt = seqproc.outbox.restock(conn, 500 + thread, 1)
                            restocked += 1
                        else:
                            pair = (rng.randint(1, 10), rng.choice(users))
                            liked = rng.random() < 0.6
                            receipt = (seqproc.outbox.like if liked else seqproc.outbox.unlike)(conn, *pair)
                            pairs[pair] = liked
                        keys.append(f"{receipt.event_type}:{receipt.idempotency_key}")
                    if rollback:
                        raise Rollback
            except Rollback:
                with stream.lock:
                    stream.rolled_back_keys.update(keys)
                    stream.rolled_back_orders.add(order)
                continue
            except DBAPIError:
                if not committed(app, order):  # the database went away mid-transaction (a failover)
                    continue
            with stream.lock:  # this thread is the only one for its users: its commit order is their order
                stream.committed_keys.update(keys)
                stream.committed_orders.add(order)
                stream.likes.update(pairs)
                stream.restocks += restocked
            time.sleep(0.001)

    # Per product, one unit: reserve it, release it, reserve again, each in a transaction of its own committed
    # before the next: a step applied out of order shows as a rejection.
    products = list(range(700, 706))
    with app.begin() as conn:
        stocked = [seqproc.outbox.restock(conn, product, 1) for product in products]
    stream.committed_keys.update(f"restock:{r.idempotency_key}" for r in stocked)

    def sequence(chunk: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for product in chunk:
                for step in (seqproc.outbox.reserve, seqproc.outbox.release):
                    while True:  # until the step committed (a failover may cut a transaction: then again)
                        with ids_lock:
                            marker = -next(order_ids)  # its own row tells whether it committed
                        try:
                            with app.begin() as conn:
                                conn.execute(
                                    text(f"INSERT INTO {APP_TABLE} (id, writer) VALUES (:id, -1)"), {"id": marker}
                                )
                                if step is seqproc.outbox.reserve:
                                    receipt = step(conn, product, 1, reservation_id=f"{product}-{n}")
                                else:
                                    receipt = step(conn, product, f"{product}-{n}")
                        except DBAPIError:
                            if not committed(app, marker):
                                continue
                        break
                    with stream.lock:
                        stream.committed_orders.add(marker)
                        stream.sequenced.append(receipt)
                        stream.committed_keys.add(receipt.idempotency_key)
            time.sleep(0.003)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=sequence, args=(products[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        injected = disrupt()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    finish()
    deadline = time.monotonic() + 60
    while outbox_depth(app)["depth"] and time.monotonic() < deadline:  # every committed event applied: empty
        time.sleep(0.5)

    with engine.connect() as conn:
        outcomes = {
            key: (status, reason)
            for key, status, reason in conn.execute(select(LedgerEntry.key, LedgerEntry.status, LedgerEntry.reason))
        }
    # A step applied out of order is rejected (a release before its reserve cancels it; the reserve is then
    # refused); the ledger records every step that is not a plain "applied".
    reordered = [
        r.idempotency_key
        for r in stream.sequenced
        if outcomes.get(r.idempotency_key, ("applied", None)) != ("applied", None)
    ]
    with engine.connect() as conn:
        ledger = set(conn.execute(select(LedgerEntry.key)).scalars())
        received = sum(product_state(conn, 500 + t)["total_received"] for t in range(4))
        liked_rows = set(conn.execute(select(ArticleLike.article_id, ArticleLike.user_id)))
        orders = set(conn.execute(text(f"SELECT id FROM {APP_TABLE}")).scalars())
        # Counted from totals, not from ledger rows (whose key is unique): units received beyond the units
        # restocked, the tables' own double counts, and any event of a rolled-back transaction applied at all.
        doubled = (
            units_doubled(received, stream.restocks) + doubled_in_tables(conn) + len(stream.rolled_back_keys & ledger)
        )
    expected_likes = {pair for pair, liked in stream.likes.items() if liked}
    report(
        fault,
        injected=injected,
        sent=len(stream.committed_keys),
        lost=len(stream.committed_keys - ledger) + max(0, stream.restocks - received),
        doubled=doubled,
        out_of_order=len(liked_rows ^ expected_likes) + len(reordered),
    )
    assert len(stream.committed_keys) > min_events
    assert stream.rolled_back_keys, "some transactions were rolled back"
    # Committed: applied (the ledger holds every key); rolled back: never, not even its own row.
    assert stream.committed_keys <= ledger
    assert not stream.rolled_back_keys & ledger
    assert orders == stream.committed_orders
    assert len(ledger) == len(stream.committed_keys)
    # Exactly once: restocks of one unit with fresh keys, counted.
    assert received == stream.restocks
    # In order per key: every reserve/release step applied, each unit back on the shelf; the last like wins.
    assert not reordered, reordered[:5]
    assert liked_rows == expected_likes
    with engine.connect() as conn:
        for product in (700, 701, 702, 703, 704, 705):
            state = product_state(conn, product)
            assert (state["available"], state["reserved"], state["total_received"]) == (1, 0, 1)
        assert check_invariants(conn).ok
    return stream


def test_rolled_back_transactions_send_nothing_and_relays_killed_lose_nothing(
    clean: Settings,
    app_engine: Engine,
    engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    """Two relays run at once; one at a time is killed with SIGKILL (mid-pass: pushed, not recorded) and replaced.
    Each pass of the relays killed holds its pushes 0.2 s before recording them, so that a kill lands mid-pass; the
    relays after it must say that they send those events again (the broker counts more pushes than recorded)."""
    start_worker(clean)
    mid_pass = {RELAY_PUSHED_DELAY_ENV: "0.2"}
    steady = start_relay(clean, **mid_pass)
    relays = [steady]
    rng = random.Random(1)

    def kill_relays() -> int:
        kills = 6
        for _ in range(kills):
            relay = start_relay(clean, **mid_pass)
            relays.append(relay)
            time.sleep(rng.uniform(0.3, 0.9))
            relay.kill()
        steady.kill()
        time.sleep(0.5)
        return kills + 1

    def finish() -> None:
        relays.append(start_relay(clean))

    outbox_stream(
        clean,
        app_engine,
        engine,
        disrupt=kill_relays,
        finish=finish,
        fault="outbox relay SIGKILL mid-stream, forced rollbacks (1 in 5 transactions)",
    )
    # The kills landed mid-pass: a relay after them found the broker's count above its record and sent again.
    resends = sum(relay.log().count("a relay died after pushing") for relay in relays)
    print(f"resends after a mid-pass kill: {resends}")
    assert resends > 0


def aof_incr_files(directory: Path) -> list[Path]:
    return sorted((directory / "appendonlydir").glob("*.incr.aof"))


def test_a_broker_that_lost_its_last_second_of_writes_loses_no_committed_event(
    clean: Settings,
    app_engine: Engine,
    engine: Engine,
    start_redis: Callable[..., PrivateRedis],
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    """The broker's Redis (append-only, fsync every second) is killed with SIGKILL and comes back without the
    writes of its last second (its append-only file cut back to where it stood a second before the kill), twice."""
    broker = start_redis(fsync="everysec")
    settings = clean.model_copy(update={"broker_url": broker.url(0)})
    start_worker(settings)
    relay = start_relay(settings)
    lost_bytes: list[int] = []

    def kill_redis() -> int:
        crashes = 2
        for _ in range(crashes):
            sizes: list[tuple[float, int]] = []
            until = time.monotonic() + 3.0
            while time.monotonic() < until:  # the stream flows; note how far the append-only file went, and when
                files = aof_incr_files(broker.directory)
                sizes.append((time.monotonic(), files[-1].stat().st_size if files else 0))
                time.sleep(0.05)
            assert broker.process is not None
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait(10)
            killed_at = time.monotonic()
            second_before = max(size for at, size in sizes if at <= killed_at - 1.0)
            incr = aof_incr_files(broker.directory)[-1]
            lost_bytes.append(incr.stat().st_size - second_before)
            with incr.open("r+b") as aof:
                aof.truncate(second_before)  # the last second of writes never reached the disk
            broker.start()  # aof-load-truncated: it loads what is left
        return crashes

    outbox_stream(
        settings,
        app_engine,
        engine,
        disrupt=kill_redis,
        finish=lambda: None,
        fault="broker Redis SIGKILL, last second of writes lost (outbox + relay)",
    )
    assert all(n > 0 for n in lost_bytes), lost_bytes  # the crashes really lost writes...
    assert "the broker lost" in relay.log()  # ...the relay saw its count go back, and sent those events again


def advisory_locks_held(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns AND granted"),
                {"ns": LOCK_NAMESPACE},
            ).scalar_one()
        )


def test_a_relay_stuck_inside_its_transaction_lets_go_of_the_partitions(
    clean: Settings, engine: Engine, start_redis: Callable[..., PrivateRedis], start_relay: Callable[..., RelayProcess]
) -> None:
    """The broker stops answering (SIGSTOP) while the relay is inside a pass: the relay waits on it, holding every
    partition's advisory lock. PostgreSQL ends its idle transaction after min(apply time limit, lease) (1 s here),
    which frees the locks for other relays, long before the relay's own Redis timeout (10 s); once the broker is
    back, the relay sends on."""
    broker = start_redis()
    settings = clean.model_copy(update={"broker_url": broker.url(0), "apply_time_limit_s": 1, "lease_s": 1})
    seqproc.configure(settings)
    with engine.begin() as conn:
        first = seqproc.outbox.like(conn, 41, 1)
    relay = start_relay(settings)
    wait_for(lambda: not outbox_depth(engine)["unsent"], 15, "the first event sent")
    assert broker.process is not None
    broker.process.send_signal(signal.SIGSTOP)
    try:
        with engine.begin() as conn:
            later = seqproc.outbox.like(conn, 41, 2)
        wait_for(lambda: advisory_locks_held(engine), 5, "the relay waiting on the broker inside its transaction")
        stuck_at = time.monotonic()
        wait_for(lambda: advisory_locks_held(engine) == 0, 5, "PostgreSQL to end the stuck transaction")
        freed_after_s = time.monotonic() - stuck_at
    finally:
        broker.process.send_signal(signal.SIGCONT)
    wait_for(lambda: not outbox_depth(engine)["unsent"], 30, "the later event sent once the broker is back")
    client = redis.Redis.from_url(settings.broker_url)
    queued = [json.loads(m) for m in client.lrange(queue_name(first.partition), 0, -1)]
    ids = [e["id"] for m in reversed(queued) for e in json.loads(m["body"])[1]["events"]]
    assert ids == [first.event_id, later.event_id]
    assert "relay pass failed" in relay.log()
    assert freed_after_s < 4
