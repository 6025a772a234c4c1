"""``seqproc.aio`` on the real Redis and PostgreSQL, its events applied by a real ``seqproc worker`` (and the async
outbox's sent by a real ``seqproc relay``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

import seqproc
import seqproc.aio
from seqproc.models.settings import Settings
from seqproc.models.wire import queue_name
from seqproc.producer.aio import loops, publisher
from seqproc.worker.ops.inspect import article_state, check_invariants, product_state
from tests.conftest import RelayProcess, WorkerProcess, free_port, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(90)]


def run(coroutine: Coroutine[Any, Any, Any], timeout_s: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))


def article(engine: Engine, article_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return article_state(conn, article_id)


def outbox_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM seqproc_outbox")).scalar_one())


def test_concurrent_coroutines_share_messages_and_every_like_is_applied_once(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    broker = redis.Redis.from_url(clean.broker_url)

    async def send() -> tuple[list[seqproc.Receipt], int, int]:
        receipts = await asyncio.gather(*(seqproc.aio.like(42, user) for user in range(1, 201)))
        sender = await publisher()
        return list(receipts), sender.sent_messages, sender.sent_events

    receipts, messages, events = run(send())
    assert events == 200
    assert messages <= 2  # 200 calls of one loop, one partition: one or two messages, not 200
    [queue] = {receipt.queue for receipt in receipts}
    assert broker.llen(queue) == messages
    assert len({receipt.event_id for receipt in receipts}) == 200

    start_worker(clean)

    async def settle() -> list[seqproc.Outcome]:
        return await seqproc.aio.wait_all(receipts, timeout_s=30)

    assert {outcome.status for outcome in run(settle())} == {"applied"}
    assert receipts[0].wait(timeout_s=5).status == "applied"  # the blocking wait of the same receipt works too
    assert article(engine, 42) == {"article_id": 42, "like_count": 200, "likes": 200, "consistent": True}


def test_a_bad_value_names_the_field_and_sends_nothing(clean: Settings) -> None:
    broker = redis.Redis.from_url(clean.broker_url)

    async def main() -> None:
        with pytest.raises(seqproc.InvalidEvent, match=r"^user_id: must be >= 1") as caught:
            await seqproc.aio.like(1, 0)
        assert caught.value.field == "user_id"
        with pytest.raises(seqproc.InvalidEvent, match=r"^reservation_id: "):
            await seqproc.aio.release(1, "")
        with pytest.raises(seqproc.InvalidEvent, match=r"^events\[2\]\.quantity: must be >= 1"):
            await seqproc.aio.send_many(
                [
                    {"type": "like", "article_id": 1, "user_id": 1},
                    {"type": "restock", "product_id": 1, "quantity": 5},
                    {"type": "restock", "product_id": 1, "quantity": 0},
                ]
            )

    run(main())
    assert broker.dbsize() == 0  # no message, no bell


def test_wait_and_wait_all_return_outcomes_and_time_out(
    clean: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    async def before_any_worker() -> list[seqproc.Receipt]:
        receipts = [
            await seqproc.aio.restock(9, 3),
            await seqproc.aio.reserve(9, 2, reservation_id="order-1"),
            await seqproc.aio.reserve(9, 2, reservation_id="order-2"),
            await seqproc.aio.like(5, 1, idempotency_key="request-1"),
            await seqproc.aio.like(5, 1, idempotency_key="request-1"),  # a client retry
        ]
        started = time.monotonic()
        with pytest.raises(seqproc.OutcomeTimeout, match=r"no outcome for restock event .* within 0\.3 s"):
            await seqproc.aio.wait(receipts[0], timeout_s=0.3)
        with pytest.raises(seqproc.OutcomeTimeout, match=r"^5 of 5 events have no outcome after 0\.3 s"):
            await seqproc.aio.wait_all(receipts, timeout_s=0.3)
        assert time.monotonic() - started < 3
        return receipts

    receipts = run(before_any_worker())
    start_worker(clean)

    async def after() -> None:
        outcome = await seqproc.aio.wait(receipts[0], timeout_s=30)
        assert outcome.status == "applied"
        outcomes = await seqproc.aio.wait_all(receipts, timeout_s=30)
        assert [(o.status, o.reason) for o in outcomes] == [
            ("applied", None),
            ("applied", None),
            ("rejected", "insufficient_stock"),
            ("applied", None),
            ("duplicate", None),
        ]
        assert outcomes[4].first == seqproc.Outcome("applied")
        # Many coroutines waiting at once share one reader (redis.asyncio's pool would refuse a connection each).
        waited = await asyncio.gather(*(seqproc.aio.wait(receipt, timeout_s=30) for receipt in receipts * 60))
        assert [o.status for o in waited[:5]] == [o.status for o in outcomes]

    run(after())


def test_publish_error_when_the_broker_is_unreachable(clean: Settings) -> None:
    closed = free_port()  # nothing listens there
    unreachable = clean.model_copy(update={"broker_url": f"redis://127.0.0.1:{closed}/0", "publish_timeout_s": 0.5})
    seqproc.producer.configure(unreachable)

    async def main() -> list[BaseException | seqproc.Receipt]:
        return await asyncio.gather(*(seqproc.aio.like(1, user) for user in range(1, 51)), return_exceptions=True)

    started = time.monotonic()
    results = run(main())
    elapsed = time.monotonic() - started
    assert all(isinstance(result, seqproc.PublishError) for result in results)
    assert "they were NOT sent" in str(results[-1])
    assert f"127.0.0.1:{closed}" in str(results[-1])
    # publish_timeout_s bounds the retries of seqproc; redis-py's own reconnect attempts come on top (as in the
    # threaded publisher), a few seconds at most.
    assert elapsed < 20


def test_the_event_loop_runs_while_sends_wait_for_the_broker(clean: Settings) -> None:
    """A send awaits the broker, it never blocks the loop: a ticker task runs between the sends of a sequence, and
    while one send waits for a broker that holds its writes. Counted against what a blocking send would allow (no
    tick at all while it runs), not against a tick rate, which a loaded machine does not keep."""
    broker = redis.Redis.from_url(clean.broker_url)

    async def ticker(ticks: list[float], stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.001)

    async def main() -> tuple[list[float], list[tuple[float, float]], list[float], tuple[float, float]]:
        await seqproc.aio.like(1, 1)  # connected
        ticks: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticker(ticks, stop))
        await asyncio.sleep(0)  # the ticker's first tick
        sends = []
        for user in range(1, 201):  # 200 sends, one after the other
            started = time.monotonic()
            await seqproc.aio.like(2, user)
            sends.append((started, time.monotonic()))
        # One send that the broker holds up for 300 ms: the loop keeps going meanwhile.
        broker.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        paused_ticks: list[float] = []
        paused_started = time.monotonic()
        send = asyncio.ensure_future(seqproc.aio.like(3, 1))
        while not send.done():
            paused_ticks.append(time.monotonic())
            await asyncio.sleep(0.001)
        await send
        paused = (paused_started, time.monotonic())
        stop.set()
        await tick
        return ticks, sends, paused_ticks, paused

    ticks, sends, paused_ticks, paused = run(main())
    # Between the first send's start and the last one's end the ticker ran again and again (a blocking send leaves
    # it one tick, before the first).
    during = [t for t in ticks if sends[0][0] < t < sends[-1][1]]
    assert len(during) >= 10, f"{len(during)} ticks during 200 sends of {sends[-1][1] - sends[0][0]:.2f} s"
    assert paused[1] - paused[0] >= 0.25  # the send did wait for the broker...
    # ...and the loop ran meanwhile, all along: ticks in the first and in the last 150 ms of the wait.
    offsets = [round(t - paused[0], 3) for t in paused_ticks]
    wait = f"a send waiting {paused[1] - paused[0]:.3f} s; loop ticks at (s) {offsets[:5]} ... {offsets[-5:]}"
    assert any(t < paused[0] + 0.15 for t in paused_ticks[1:]), f"the loop stood still at first: {wait}"
    assert any(t > paused[1] - 0.15 for t in paused_ticks), f"the loop stood still at the end: {wait}"
    assert broker.llen(queue_name(seqproc.producer.partition_for("article:2", clean.partitions))) >= 1


def test_each_event_loop_has_its_own_clients_closed_when_it_ends(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Loops in several threads at once, and loop after loop in one thread: each gets its clients (a redis.asyncio
    client is bound to its loop) and closes them when asyncio.run ends it."""
    start_worker(clean)
    errors: list[BaseException] = []

    async def likes(first_user: int) -> None:
        receipts = await asyncio.gather(*(seqproc.aio.like(7, first_user + n) for n in range(50)))
        await seqproc.aio.wait_all(receipts, timeout_s=30)

    def thread_main(offset: int) -> None:
        try:
            for round_ in range(3):  # a new loop each time
                run(likes(offset + round_ * 50 + 1))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=thread_main, args=(n * 1000,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert loops._CLIENTS == {}  # every loop's clients closed and forgotten at its end
    assert article(engine, 7)["like_count"] == 450


def test_async_outbox_writes_in_the_callers_transaction_with_every_connection_kind(
    clean: Settings,
    engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    psycopg_url = clean.outbox_url.replace("+psycopg", "")

    async def main() -> list[seqproc.Receipt]:
        async_engine = create_async_engine(clean.outbox_url)
        committed: list[seqproc.Receipt] = []
        try:
            # SQLAlchemy AsyncConnection: a rollback writes nothing, a commit writes the event.
            async def view_that_fails() -> None:
                async with async_engine.begin() as conn:
                    await seqproc.aio.outbox.like(conn, 11, 1)
                    raise RuntimeError("the view failed after enqueueing")

            with pytest.raises(RuntimeError):
                await view_that_fails()
            assert outbox_count(engine) == 0
            async with async_engine.begin() as conn:
                committed.append(await seqproc.aio.outbox.like(conn, 11, 2))
            # AsyncSession, in the session's transaction.
            async with AsyncSession(async_engine) as session:
                await seqproc.aio.outbox.restock(session, 12, 10)
                await session.rollback()
                committed.append(await seqproc.aio.outbox.restock(session, 12, 5))
                await session.commit()
            # psycopg's AsyncConnection.
            async with await psycopg.AsyncConnection.connect(psycopg_url) as conn:
                await seqproc.aio.outbox.reserve(conn, 12, 2, reservation_id="r-rolled-back")
                await conn.rollback()
                committed += await seqproc.aio.outbox.send_many(
                    conn,
                    [
                        {"type": "reserve", "product_id": 12, "quantity": 2, "reservation_id": "r-1"},
                        {"type": "like", "article_id": 11, "user_id": 3},
                    ],
                )
            # Bad input: the field is named, nothing is written.
            async with async_engine.begin() as conn:
                with pytest.raises(seqproc.InvalidEvent, match=r"^quantity: must be >= 1"):
                    await seqproc.aio.outbox.restock(conn, 12, 0)
            assert outbox_count(engine) == 4
            with pytest.raises(seqproc.aio.outbox.OutboxConnectionError, match="not an AsyncEngine"):
                await seqproc.aio.outbox.like(async_engine, 1, 1)
        finally:
            await async_engine.dispose()
        return committed

    receipts = run(main())
    assert [r.event_type for r in receipts] == ["like", "restock", "reserve", "like"]
    start_worker(clean)
    start_relay(clean)

    async def applied() -> list[seqproc.Outcome]:
        return await seqproc.aio.wait_all(receipts, timeout_s=30)

    assert {outcome.status for outcome in run(applied())} == {"applied"}
    assert article(engine, 11)["like_count"] == 2  # users 2 and 3, not the rolled-back 1
    with engine.connect() as conn:
        stock = product_state(conn, 12)
        assert (stock["available"], stock["reserved"], stock["total_received"]) == (3, 2, 5)
        assert check_invariants(conn).ok
    wait_for(lambda: outbox_count(engine) == 0, 15, "the applied rows forgotten by the relay")
