"""The transactional outbox and its relay, on the real PostgreSQL and Redis with real worker and relay processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, delete, func, insert, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import seqproc
from seqproc.models.db import ensure_database, make_engine
from seqproc.models.errors import InvalidEvent
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter, LedgerEntry, ParkedKey
from seqproc.models.wire import partition_for, queue_name, relay_pushed_key
from seqproc.producer.outbox import OutboxConnectionError
from seqproc.worker import relay as relay_module
from seqproc.worker import relay_forget
from seqproc.worker.beat.jobs import purge_ledger
from seqproc.worker.beat.singleton import singleton
from seqproc.worker.cli.codes import RET_CONFIG
from seqproc.worker.ops.lag import outbox_depth
from seqproc.worker.ownership.partitions import check_partition_count, set_partition_count
from seqproc.worker.processes import settings_env
from seqproc.worker.relay import Relay
from tests.conftest import RelayProcess, WorkerProcess, wait_for
from tests.integration.django_example import database_url

pytestmark = pytest.mark.services


def outbox_rows(engine: Engine) -> list[tuple[int, str, int | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT id, ledger_key, push_seq FROM seqproc_outbox ORDER BY id"))]


def relay_for(settings: Settings, engine: Engine) -> Relay:
    return Relay(settings, engine, engine, redis.Redis.from_url(settings.broker_url))


def test_a_rolled_back_transaction_writes_nothing_and_a_committed_one_is_sent_once(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    def view_that_fails() -> None:
        with engine.begin() as conn:
            seqproc.outbox.like(conn, 5, 1)
            raise RuntimeError("the view failed after enqueueing")

    with pytest.raises(RuntimeError):
        view_that_fails()
    assert outbox_rows(engine) == []

    with engine.begin() as conn:
        receipt = seqproc.outbox.like(conn, 5, 2)
        assert receipt.partition == partition_for("article:5", clean.partitions)
    [(_, key, push_seq)] = outbox_rows(engine)
    assert key == f"like:{receipt.idempotency_key}"
    assert push_seq is None

    relay = relay_for(clean, engine)
    result = relay.tick()
    assert (result.sent, result.messages) == (1, 1)
    assert outbox_rows(engine)[0][2] == 1  # sent, in the partition's first message; kept until applied
    assert relay.tick().sent == 0  # never sent twice
    start_worker(clean)
    assert receipt.wait(30).status == "applied"
    wait_for(lambda: relay.tick().forgotten or not outbox_rows(engine), 10, "the applied row forgotten")
    assert outbox_rows(engine) == []
    with engine.connect() as conn:
        assert conn.execute(select(LedgerEntry.key)).scalars().all() == [f"like:{receipt.idempotency_key}"]


def test_every_connection_kind_writes_in_the_callers_transaction(clean: Settings, engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        seqproc.outbox.restock(session, 3, 10)
    with psycopg.connect(clean.database_url.replace("+psycopg", "")) as conn:
        seqproc.outbox.reserve(conn, 3, 2, reservation_id="r-1")
        conn.rollback()  # nothing
        receipts = seqproc.outbox.send_many(
            conn,
            [
                {"type": "reserve", "product_id": 3, "quantity": 1, "reservation_id": "r-2"},
                {"type": "like", "article_id": 1, "user_id": 1},
            ],
        )
    assert [r.event_type for r in receipts] == ["reserve", "like"]
    keys = [key for _, key, _ in outbox_rows(engine)]
    assert keys == [keys[0], "reserve:r-2", f"like:{receipts[1].idempotency_key}"]
    assert keys[0].startswith("restock:")
    with pytest.raises(OutboxConnectionError, match="not an Engine"):
        seqproc.outbox.like(engine, 1, 1)
    with pytest.raises(OutboxConnectionError, match=r"conn: must be a SQLAlchemy Connection or Session"):
        seqproc.outbox.like(object(), 1, 1)


def test_autocommit_connections_are_refused_and_an_empty_batch_writes_nothing(clean: Settings, engine: Engine) -> None:
    """An event written on a connection that commits each statement by itself would be sent whether the caller's
    transaction commits or not: refused, naming the parameter and the rule. A transaction block opened on an
    autocommit psycopg connection is a transaction: accepted."""
    refused = r"^conn: must be inside a transaction, not in autocommit mode"
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    with autocommit.begin() as conn, pytest.raises(OutboxConnectionError, match=refused):
        seqproc.outbox.like(conn, 1, 1)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(OutboxConnectionError, match=refused):
            seqproc.outbox.like(conn, 1, 2)
    with Session(autocommit) as session, pytest.raises(OutboxConnectionError, match=refused):
        seqproc.outbox.like(session, 1, 3)
    with psycopg.connect(clean.database_url.replace("+psycopg", ""), autocommit=True) as conn:
        with pytest.raises(OutboxConnectionError, match=refused):
            seqproc.outbox.like(conn, 1, 4)
        with conn.transaction():
            accepted = seqproc.outbox.like(conn, 1, 5)
        assert seqproc.outbox.write(conn, []) == []

    async def async_calls() -> None:
        async_engine = create_async_engine(clean.outbox_url, isolation_level="AUTOCOMMIT")
        try:
            async with async_engine.begin() as conn:
                with pytest.raises(OutboxConnectionError, match=refused):
                    await seqproc.aio.outbox.like(conn, 1, 6)
            async with AsyncSession(async_engine) as session:
                with pytest.raises(OutboxConnectionError, match=refused):
                    await seqproc.aio.outbox.like(session, 1, 7)
        finally:
            await async_engine.dispose()
        url = clean.outbox_url.replace("+psycopg", "")
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            with pytest.raises(OutboxConnectionError, match=refused):
                await seqproc.aio.outbox.like(conn, 1, 8)
            assert await seqproc.aio.outbox.write(conn, []) == []

    asyncio.run(async_calls())
    with engine.begin() as conn:
        assert seqproc.outbox.write(conn, []) == []
    assert [key for _, key, _ in outbox_rows(engine)] == [f"like:{accepted.idempotency_key}"]


def test_bad_input_names_the_field_and_writes_nothing(clean: Settings, engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(InvalidEvent, match=r"^quantity: must be >= 1"):
            seqproc.outbox.reserve(conn, 3, 0, reservation_id="r")
        with pytest.raises(InvalidEvent, match=r"^events\[1\].user_id: is required"):
            seqproc.outbox.send_many(
                conn, [{"type": "like", "article_id": 1, "user_id": 1}, {"type": "like", "article_id": 1}]
            )
    assert outbox_rows(engine) == []


@pytest.mark.parametrize("quiet", [False, True], ids=["written-to", "quiet"])
def test_a_broker_that_lost_messages_gets_them_again_in_order(clean: Settings, engine: Engine, quiet: bool) -> None:
    """The relay counts what it pushed per queue in the broker itself: a count that went back means messages were
    lost, and their events go again, before anything newer. Each pass checks every partition's count, not only
    those with new rows: a ``quiet`` partition (nothing written to it after the loss) gets its events again too."""
    with engine.begin() as conn:
        first = [seqproc.outbox.like(conn, 8, user) for user in range(1, 4)]
    relay = relay_for(clean, engine)
    assert relay.tick().messages == 1
    queue = queue_name(first[0].partition)
    client = redis.Redis.from_url(clean.broker_url)
    client.flushdb()  # the broker came back empty: its queue and count are gone
    later = []
    if not quiet:
        with engine.begin() as conn:
            later = [seqproc.outbox.like(conn, 8, 4)]
    lost = relay.tick()
    assert lost.resent == 3
    assert (lost.sent, lost.messages) == (3 + len(later), 1)  # the lost ones again, and nothing newer before them
    [message] = client.lrange(queue, 0, -1)
    events = json.loads(json.loads(message)["body"])[1]["events"]
    assert [e["id"] for e in events] == [r.event_id for r in [*first, *later]]
    assert int(client.get(relay_pushed_key(relay.outbox_id, queue))) == 1
    assert relay.tick().resent == 0  # the counts agree again


def test_rows_never_applied_do_not_hold_back_forgetting_and_are_not_checked_every_pass(
    clean: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forget scan moves on by a chunk per pass and wraps: rows whose key never reaches the ledger (parked,
    dead-lettered, never taken) do not keep the applied rows behind them in the outbox. A pass that forgot nothing
    makes the next scan wait about a second, instead of reading the same rows again on every pass."""
    monkeypatch.setattr(relay_forget, "FORGET_CHUNK", 4)
    with engine.begin() as conn:
        stuck = seqproc.outbox.send_many(conn, [{"type": "like", "article_id": 6, "user_id": u} for u in range(1, 7)])
        done = seqproc.outbox.send_many(conn, [{"type": "like", "article_id": 7, "user_id": u} for u in range(1, 7)])
    scans = []
    relay_engine = make_engine(clean.outbox_url, pool_size=2)
    sa_event.listen(
        relay_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: scans.append(1) if "WHERE push_seq IS NOT NULL" in statement else None,
    )
    try:
        relay = relay_for(clean, relay_engine)
        assert relay.tick().sent == 12
        with engine.begin() as conn:  # a worker applied the later ones: the ledger holds their keys
            conn.execute(
                insert(LedgerEntry),
                [{"key": f"like:{r.idempotency_key}", "partition": r.partition, "event_type": "like"} for r in done],
            )
        wait_for(lambda: relay.tick() and len(outbox_rows(engine)) == 6, 10, "the applied rows forgotten")
        assert {key for _, key, _ in outbox_rows(engine)} == {f"like:{r.idempotency_key}" for r in stuck}
        scans.clear()
        # Passes 10 ms apart for at least 1.5 s, and until they outnumber twice the scans the rule allows (one per
        # FORGET_IDLE_S, and one more at each end of the window): however slowly a loaded machine runs them.
        started = time.monotonic()
        passes = 0
        while True:
            relay.tick()
            passes += 1
            elapsed_s = time.monotonic() - started
            allowed = 2 + elapsed_s / relay_forget.FORGET_IDLE_S
            if elapsed_s >= 1.5 and passes >= 2 * allowed:
                break
            assert elapsed_s < 60, f"{passes} relay passes in {elapsed_s:.1f} s"
            time.sleep(0.01)
        assert 1 <= len(scans) <= allowed, (len(scans), passes, elapsed_s)  # about one a second, not one a pass
    finally:
        relay_engine.dispose()


def test_parked_events_are_forgotten_once_dead_lettered_and_never_dead_lettered_twice(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Events of a parked entity are dead-lettered by the worker and never reach the ledger: the relay forgets them
    once the dead-letter store holds them (replay takes them from there), and a broker that lost their messages
    does not get them again (they would be dead-lettered a second time)."""
    entity = "article:9031"
    partition = partition_for(entity, clean.partitions)
    queue = queue_name(partition)
    with engine.begin() as conn:
        conn.execute(insert(ParkedKey).values(entity_key=entity, partition=partition, reason="a test parked it"))
    try:
        with engine.begin() as conn:
            parked = [seqproc.outbox.like(conn, 9031, user) for user in (1, 2)]
        relay = relay_for(clean, engine)
        assert relay.tick().sent == 2
        start_worker(clean)
        wait_for(lambda: dead_letters(engine, entity) == 2, 30, "both events dead-lettered behind the parked entity")
        client = redis.Redis.from_url(clean.broker_url)
        client.flushdb()  # the broker lost the message (and its count) after the worker took it
        lost = relay.tick()
        assert (lost.resent, lost.sent, lost.forgotten) == (0, 0, 2)
        assert client.llen(queue) == 0
        assert outbox_rows(engine) == []

        with engine.begin() as conn:  # and without a loss, the forget pass lets go of them
            later = seqproc.outbox.like(conn, 9031, 3)
        assert relay.tick().sent == 1
        wait_for(lambda: dead_letters(engine, entity) == 3, 30, "the later event dead-lettered")
        wait_for(lambda: relay.tick().forgotten, 5, "the dead-lettered row forgotten")
        assert outbox_rows(engine) == []
        assert later.wait(5).reason == "parked"
        assert {o.reason for o in seqproc.wait_all(parked, timeout_s=5)} == {"parked"}
        assert dead_letters(engine, entity) == 3
    finally:
        with engine.begin() as conn:
            conn.execute(delete(ParkedKey).where(ParkedKey.entity_key == entity))


def dead_letters(engine: Engine, entity: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(DeadLetter).where(DeadLetter.entity_key == entity)).scalar()
        )


def purge(engine: Engine, settings: Settings, run_name: str) -> str:
    with singleton(engine, settings, run_name, interval_s=3600) as run:
        return purge_ledger(engine, settings, run)


def test_the_ledger_purge_keeps_the_keys_of_events_still_in_the_outbox(clean: Settings, engine: Engine) -> None:
    """A row the relay still holds may be sent again (after a broker loss, or before its forget pass): its key must
    stay in the ledger however old, or the copy would be applied a second time."""
    with engine.begin() as conn:
        receipts = seqproc.outbox.send_many(conn, [{"type": "like", "article_id": 12, "user_id": u} for u in (1, 2)])
    keys = [f"like:{r.idempotency_key}" for r in receipts]
    old = datetime.now(UTC) - timedelta(days=clean.dedup_window_days + 1)
    with engine.begin() as conn:  # applied long ago; the relay has not forgotten them yet
        conn.execute(
            insert(LedgerEntry),
            [{"key": k, "partition": 0, "event_type": "like", "applied_at": old} for k in [*keys, "old-1", "old-2"]],
        )
    settings = clean.model_copy(update={"purge_chunk": 3})
    detail = purge(engine, settings, "purge_ledger")
    assert detail.startswith("purged 2 key(s)")
    assert detail.endswith("kept 2 of events still in the outbox")
    with engine.connect() as conn:
        assert set(conn.execute(select(LedgerEntry.key)).scalars()) == set(keys)
    relay = relay_for(clean, engine)
    assert relay.tick().forgotten == 2  # sent and found applied: forgotten
    assert purge(engine, settings, "purge_ledger-again").startswith("purged 2 key(s)")
    with engine.connect() as conn:
        assert conn.execute(select(LedgerEntry.key)).scalars().all() == []


def test_the_ledger_purge_without_an_outbox_table_purges_as_before(clean: Settings, engine: Engine) -> None:
    empty = database_url("_no_outbox", clean.database_url)  # a database of its own, never migrated
    ensure_database(empty)
    old = datetime.now(UTC) - timedelta(days=clean.dedup_window_days + 1)
    with engine.begin() as conn:
        conn.execute(insert(LedgerEntry), [{"key": "old-1", "partition": 0, "event_type": "like", "applied_at": old}])
    detail = purge(engine, clean.model_copy(update={"outbox_database_url": empty}), "purge_ledger")
    assert detail.startswith("purged 1 key(s)")


def test_a_relay_with_another_partition_count_refuses_to_start(
    clean: Settings, engine: Engine, start_relay: Callable[..., RelayProcess]
) -> None:
    check_partition_count(engine, clean.partitions)  # the database's count: 16
    relay = start_relay(clean.model_copy(update={"partitions": 8}), ready=False)
    assert relay.process.wait(20) == RET_CONFIG
    assert "SEQPROC_PARTITIONS is 8 but this database was set up with 16 partitions" in relay.log()
    assert "Traceback" not in relay.log()


def test_the_partition_count_is_not_changed_while_the_outbox_holds_unsent_events(
    clean: Settings, engine: Engine
) -> None:
    check_partition_count(engine, clean.partitions)
    with engine.begin() as conn:
        seqproc.outbox.send_many(conn, [{"type": "like", "article_id": 13, "user_id": u} for u in (1, 2)])
    command = [sys.executable, "-m", "seqproc", "partitions", "set", "8"]
    try:
        refused = subprocess.run(command, env=settings_env(clean), capture_output=True, text=True, timeout=60)
        assert refused.returncode == RET_CONFIG
        assert "the outbox holds 2 event(s) not sent yet" in refused.stderr
        assert "let `seqproc relay` send them" in refused.stderr
        check_partition_count(engine, clean.partitions)  # unchanged
        assert relay_for(clean, engine).tick().sent == 2  # sent: then it may change (here: to the same count)
        client = redis.Redis.from_url(clean.broker_url)
        client.flushdb()  # as if the workers drained the queues
        assert set_partition_count(engine, client, clean.partitions, outbox=engine) == clean.partitions
    finally:
        with engine.begin() as conn:  # whatever happened, the count the other tests run with
            conn.execute(text("UPDATE seqproc_meta SET value = :n WHERE name = 'partition_count'"), {"n": "16"})


def test_a_partition_the_broker_refuses_does_not_hold_back_the_others(clean: Settings, engine: Engine) -> None:
    articles = (21, 22)
    partitions = [partition_for(f"article:{a}", clean.partitions) for a in articles]
    assert partitions[0] != partitions[1]
    client = redis.Redis.from_url(clean.broker_url)
    client.set(queue_name(partitions[0]), "not a list")  # every push onto it fails (WRONGTYPE)
    with engine.begin() as conn:
        seqproc.outbox.send_many(
            conn, [{"type": "like", "article_id": a, "user_id": u} for a in articles for u in (1, 2)]
        )
    relay = relay_for(clean, engine)
    result = relay.tick()
    assert (result.sent, result.messages) == (2, 1)  # the other partition's events went
    assert client.llen(queue_name(partitions[1])) == 1
    with engine.connect() as conn:
        unsent = conn.execute(text("SELECT partition FROM seqproc_outbox WHERE push_seq IS NULL")).scalars().all()
    assert unsent == [partitions[0]] * 2
    client.delete(queue_name(partitions[0]))  # fixed: they go on the next pass
    assert relay.tick().sent == 2
    assert client.llen(queue_name(partitions[0])) == 1


def test_a_relay_that_pushed_and_died_before_its_commit_sends_again(clean: Settings, engine: Engine) -> None:
    with engine.begin() as conn:
        receipt = seqproc.outbox.like(conn, 9, 1)
    queue = queue_name(receipt.partition)
    client = redis.Redis.from_url(clean.broker_url)
    relay = relay_for(clean, engine)
    counter = relay_pushed_key(relay.outbox_id, queue)
    client.set(counter, 5)  # as if a relay pushed 5 messages, then died before recording them
    assert relay.tick().sent == 0  # it adopts the broker's count...
    assert relay.tick().sent == 1  # ...and sends the unrecorded rows again
    assert int(client.get(counter)) == 6


def test_two_relays_share_the_outbox_each_row_sent_once_in_order_per_key(clean: Settings, engine: Engine) -> None:
    relays = [relay_for(clean, engine) for _ in range(2)]
    written = 0
    stop = threading.Event()
    sent = [0, 0]

    def run(index: int) -> None:
        while not stop.is_set():
            sent[index] += relays[index].tick().sent
            stop.wait(0.005)  # a relay's pause between passes (relay_interval_ms), not a spin on the database

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        for batch in range(20):
            with engine.begin() as conn:
                seqproc.outbox.send_many(
                    conn,
                    [{"type": "like", "article_id": a, "user_id": batch + 1} for a in random.sample(range(1, 200), 25)],
                )
            written += 25
        wait_for(lambda: sum(sent) >= written, 30, "both relays done")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert sum(sent) == written  # each row sent exactly once, whoever sent it
    rows = outbox_rows(engine)
    assert all(push_seq is not None for _, _, push_seq in rows)
    # In every queue, in push order, each article's events come in the order they were written.
    with engine.connect() as conn:
        row_of = dict(conn.execute(text("SELECT event_id, id FROM seqproc_outbox")).all())
    client = redis.Redis.from_url(clean.broker_url)
    for partition in range(clean.partitions):
        pushed = reversed(client.lrange(queue_name(partition), 0, -1))  # LPUSH: the oldest is last
        events = [e for m in pushed for e in json.loads(json.loads(m)["body"])[1]["events"]]
        by_article: dict[int, list[int]] = {}
        for event in events:
            by_article.setdefault(event["article_id"], []).append(row_of[event["id"]])
        assert all(ids == sorted(ids) for ids in by_article.values()), partition


class TimedRelay(Relay):
    """A relay that notes when each of its passes started and ended (``time.monotonic()``), and what it sent."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.passes: list[tuple[float, float, int]] = []

    def tick(self) -> relay_module.PassResult:
        started = time.monotonic()
        result = super().tick()
        self.passes.append((started, time.monotonic(), result.sent))
        return result


def test_an_idle_relay_backs_off_and_still_sends_within_five_intervals(clean: Settings, engine: Engine) -> None:
    """Finding nothing, the relay doubles its wait up to 5 x relay_interval_ms (20 ms: 100 ms), instead of a pass
    every 20 ms; an event written meanwhile goes with the next pass. Measured as the waits between passes (each at
    least what the rule says, and the longest not past 5 intervals by more than a loaded machine's wake-up), and as
    passes (the event goes by the second pass that starts after its commit), never as a pass rate."""
    interval_s = clean.relay_interval_ms / 1000
    relay = TimedRelay(clean, engine, engine, redis.Redis.from_url(clean.broker_url))
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: len(relay.passes) >= 8, 30, "8 idle passes", interval_s=0.02)
        waits = [b[0] - a[1] for a, b in itertools.pairwise(list(relay.passes[:8]))]
        # 20, 40, 80 ms, then 100 ms: never shorter (a wait is a timeout, it does not end early)...
        expected = [min(interval_s * 2**n, interval_s * relay_module.IDLE_BACKOFF) for n in range(len(waits))]
        assert all(w >= e - 0.005 for w, e in zip(waits, expected, strict=True)), (waits, expected)
        # ...and the longest not past 5 intervals by more than a slow wake-up (no growing past the cap).
        assert max(waits) < interval_s * relay_module.IDLE_BACKOFF + 0.25, waits
        with engine.begin() as conn:
            seqproc.outbox.like(conn, 15, 1)
        written = time.monotonic()
        sending = wait_for(lambda: [p for p in list(relay.passes) if p[2]], 5, "the event sent", interval_s=0.005)[0]
        # The pass under way at the commit (if it read the outbox after it) or the next one: no pass that started
        # after the commit went by without sending it. The next one came within 5 intervals (the waits above).
        missed = [p for p in list(relay.passes) if written <= p[0] < sending[0]]
        assert missed == [], (missed, sending, written)
    finally:
        stop.set()
        thread.join(10)


def test_a_trickle_of_one_event_transactions_is_sent_a_pass_per_interval_not_per_event(
    clean: Settings, engine: Engine
) -> None:
    """A web server's outbox: one-event transactions committed one after another. After a pass that sent less than
    a full batch the relay waits relay_interval_ms (20 ms), so that each pass carries everything committed
    meanwhile: about one pass per interval, however many events (before: a pass, a push and a worker's fetch per
    event or two, hundreds in this test)."""
    relay = TimedRelay(clean, engine, engine, redis.Redis.from_url(clean.broker_url))
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    events = 300
    try:
        time.sleep(0.2)
        before = len(relay.passes)
        started = time.monotonic()
        for user in range(1, events + 1):
            with engine.begin() as conn:
                seqproc.outbox.like(conn, 16, user)
            time.sleep(0.002)
        wait_for(lambda: not outbox_depth(engine)["unsent"], 10, "every event sent", interval_s=0.005)
        elapsed = time.monotonic() - started
        passes = len(relay.passes) - before
    finally:
        stop.set()
        thread.join(10)
    assert passes <= elapsed / (clean.relay_interval_ms / 1000.0) + 5, (passes, elapsed)
    queue = queue_name(partition_for("article:16", clean.partitions))
    messages = int(redis.Redis.from_url(clean.broker_url).llen(queue))
    assert messages <= passes, (messages, passes)
    assert messages < events / 3, messages  # each message carries several events


def test_outbox_depth_and_relay_process(
    clean: Settings,
    engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    with engine.begin() as conn:
        receipts = seqproc.outbox.send_many(
            conn, [{"type": "like", "article_id": 4, "user_id": u} for u in range(1, 21)]
        )
    depth = outbox_depth(engine)
    assert (depth["depth"], depth["unsent"]) == (20, 20)
    assert depth["oldest_age_s"] is not None
    assert depth["oldest_age_s"] >= 0
    assert depth["by_partition"] == {receipts[0].partition: 20}
    start_worker(clean)
    relay = start_relay(clean)
    assert {o.status for o in seqproc.wait_all(receipts, timeout_s=30)} == {"applied"}
    wait_for(lambda: outbox_depth(engine)["depth"] == 0, 15, "the outbox emptied once applied")
    assert relay.stop() == 0
    assert "stopping after this pass" in relay.log()


def test_a_psycopg_outbox_write_does_not_import_sqlalchemy(clean: Settings, engine: Engine) -> None:
    """A web server's process that writes its outbox rows through psycopg (forked after `import seqproc`) must not
    pay SQLAlchemy's import at its first request: under load that was 1-2 s, the p99 of every such server
    (`seqproc bench --server gunicorn`, outbox p99 1.6 s against 32 ms)."""
    url = clean.outbox_url.replace("postgresql+psycopg://", "postgresql://", 1)
    code = (
        "import sys, psycopg, seqproc\n"
        f"conn = psycopg.connect({url!r})\n"
        "with conn.transaction():\n"
        "    seqproc.outbox.like(conn, 18, 1)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'sqlalchemy'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=settings_env(clean), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert outbox_depth(engine)["depth"] == 1  # written
