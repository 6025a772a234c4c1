"""Previews on the real Redis and PostgreSQL: for any domain (likes, stock, and a user domain: the guide's wallet) and
any stream, the preview after sending equals the state after the worker applies the same stream (no other writer),
and each pending event's predicted outcome is the one the worker gives it. Sending goes through the real push
script (the pending index); applying through the worker's apply core, then its ack (the index entries deleted), or a
real worker process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

import seqproc
from examples.wallet.wallet import Deposit, Withdraw, metadata
from seqproc.domains.likes import Like, Unlike
from seqproc.domains.stock import Commit, Release, Reserve, Restock
from seqproc.models.domain import EventModel
from seqproc.models.errors import InvalidEvent
from seqproc.models.pending import index_of, pending_events, settled_by_key
from seqproc.models.settings import Settings
from seqproc.models.wire import partition_for, queue_name
from seqproc.worker.engine.apply import PartitionBatch, apply_partitions
from tests.conftest import reset_state, wait_for
from tests.domain_properties import produce

pytestmark = pytest.mark.services

PRODUCTS = (1, 2)
USERS = (1, 2, 3)
ARTICLE = 5
ACCOUNT = 7

products = st.sampled_from(PRODUCTS)


def reservation(kind: type[EventModel], product: int, name: str, **fields: Any) -> EventModel:
    # A reservation id names one reservation of one product (the stock domain's contract).
    return kind(product_id=product, reservation_id=f"{product}-{name}", **fields)


names = st.sampled_from(["a", "b", "c"])
EVENTS = st.one_of(
    st.builds(Restock, product_id=products, quantity=st.integers(1, 3)),
    st.builds(reservation, st.just(Reserve), products, names, quantity=st.integers(1, 3)),
    st.builds(reservation, st.just(Release), products, names),
    st.builds(reservation, st.just(Commit), products, names),
    st.builds(Like, article_id=st.just(ARTICLE), user_id=st.sampled_from(USERS)),
    st.builds(Unlike, article_id=st.just(ARTICLE), user_id=st.sampled_from(USERS)),
    st.builds(Deposit, account_id=st.just(ACCOUNT), amount=st.integers(1, 20)),
    st.builds(
        Withdraw, account_id=st.just(ACCOUNT), amount=st.integers(1, 30), withdrawal_id=st.sampled_from(["w1", "w2"])
    ),
)


@pytest.fixture
def previewing(clean: Settings, engine: Engine) -> Iterator[Settings]:
    metadata.create_all(engine)  # the wallet's own table (the guide's __main__ does it)
    yield clean
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS wallet_account"))


def seen(conn: Any) -> dict[str, Any]:
    """Every key's preview, as the pages show them."""
    shown: dict[str, Any] = {}
    for product in PRODUCTS:
        p = seqproc.preview_product(conn, product)
        shown[f"product:{product}"] = (p.available, p.reserved, p.sold)
    for user in USERS:
        a = seqproc.preview_article(conn, ARTICLE, user_id=user)
        shown[f"article:{ARTICLE}"] = a.like_count
        shown[f"liked:{user}"] = a.liked
    shown[f"wallet:{ACCOUNT}"] = seqproc.preview(conn, f"wallet:{ACCOUNT}").state.balance
    return shown


def predicted(conn: Any, keys: list[str]) -> dict[str, str]:
    """The predicted outcome of every pending event, by event id."""
    return {
        str(p.event.id): p.outcome.status
        for key in keys
        for p in seqproc.preview(conn, key).pending
        if p.outcome.status != "duplicate"
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(applied=st.lists(EVENTS, max_size=15), sent=st.lists(EVENTS, min_size=1, max_size=25))
def test_the_preview_after_sending_is_the_state_after_applying(
    previewing: Settings, engine: Engine, applied: list[EventModel], sent: list[EventModel]
) -> None:
    reset_state(engine, previewing)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM wallet_account"))
    # Some history applied already, then a stream sent and not applied yet (the worker paused).
    history, stream = produce(applied), produce(sent)
    with engine.begin() as conn:
        apply_partitions(conn, [PartitionBatch(0, history, epoch=None)])
    seqproc.send_many(stream)
    keys = list(dict.fromkeys(event.entity_key for event in stream))
    with engine.connect() as conn:
        before = seen(conn)
        predictions = predicted(conn, keys)
        # Every event sent is pending, but those whose key the ledger holds (a withdrawal id used before: its
        # duplicate changes nothing, as the worker will find).
        ledger = set(conn.execute(text("SELECT key FROM idempotency_ledger")).scalars())
        pending = {str(p.event.id) for key in keys for p in seqproc.preview(conn, key).pending}
        assert pending == {str(event.id) for event in stream if event.ledger_key not in ledger}

    # The worker applies the stream (per partition, in order), then acks: the index entries go.
    by_partition: dict[int, list[EventModel]] = {}
    for event in stream:
        by_partition.setdefault(partition_for(event.entity_key, previewing.partitions), []).append(event)
    with engine.begin() as conn:
        results = apply_partitions(conn, [PartitionBatch(p, events, epoch=None) for p, events in by_partition.items()])
    outcomes = {
        str(event.id): outcome.status
        for (_, events), result in zip(by_partition.items(), results, strict=True)
        for event, outcome in zip(events, result.outcomes, strict=True)
    }
    broker = redis.Redis.from_url(previewing.broker_url)
    for index, ids in settled_by_key(
        (queue_name(partition_for(e.entity_key, previewing.partitions)), [e]) for e in stream
    ).items():
        broker.hdel(index, *ids)

    with engine.connect() as conn:
        assert seen(conn) == before
        assert all(not seqproc.preview(conn, key).pending for key in keys)
    assert predictions == {event_id: status for event_id, status in outcomes.items() if status != "duplicate"}


def test_a_like_shows_at_once_and_stays_once_a_worker_applied_it(clean: Settings, engine: Engine, start_worker) -> None:
    seqproc.restock(3, 1)
    seqproc.like(9, 1, idempotency_key="click-1")
    seqproc.like(9, 1, idempotency_key="click-1")  # a double click: the same request
    first = seqproc.reserve(3, 1, reservation_id="r1")
    second = seqproc.reserve(3, 1, reservation_id="r2")
    with engine.connect() as conn:
        article = seqproc.preview_article(conn, 9, user_id=1)
        assert (article.like_count, article.liked) == (1, True)
        assert [p.outcome.status for p in article.pending] == ["applied", "duplicate"]
        product = seqproc.preview_product(conn, 3)
        assert (product.available, product.reserved, product.sold) == (0, 1, 0)
        assert [(p.event.type, p.outcome.status, p.outcome.reason) for p in product.pending] == [
            ("restock", "applied", None),
            ("reserve", "applied", None),
            ("reserve", "rejected", "insufficient_stock"),
        ]
    start_worker(clean)
    assert [o.status for o in seqproc.wait_all([first, second], timeout_s=30)] == ["applied", "rejected"]
    broker = redis.Redis.from_url(clean.broker_url)
    for key in ("article:9", "product:3"):  # the worker's ack (after the outcomes) deletes the index entries
        wait_for(
            lambda key=key: broker.hlen(index_of(key, clean.partitions)) == 0, 10, f"the ack to empty {key}'s index"
        )
    with engine.connect() as conn:
        article = seqproc.preview_article(conn, 9, user_id=1)
        assert (article.like_count, article.liked, article.pending) == (1, True, [])
        product = seqproc.preview_product(conn, 3)
        assert (product.available, product.reserved, product.sold, product.pending) == (0, 1, 0, [])
        assert seqproc.preview_article(conn, 9, user_id=2).liked is False


def test_the_asyncio_preview_reads_the_same(clean: Settings, engine: Engine) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    seqproc.like(6, 1)
    seqproc.restock(6, 4)
    seqproc.reserve(6, 3, reservation_id="x")

    async def run() -> tuple[Any, ...]:
        async_engine = create_async_engine(engine.url)
        try:
            async with async_engine.connect() as conn, AsyncSession(async_engine) as session:
                article = await seqproc.aio.preview_article(conn, 6, user_id=1)
                product = await seqproc.aio.preview_product(session, 6)
                wallet = await seqproc.aio.preview(conn, "article:6")
                return article.like_count, article.liked, product.available, product.reserved, len(wallet.pending)
        finally:
            await async_engine.dispose()

    assert asyncio.run(run()) == (1, True, 1, 3, 1)


def test_the_outbox_relay_fills_the_index_too(clean: Settings, engine: Engine, start_relay) -> None:
    with engine.begin() as conn:
        seqproc.outbox.like(conn, 4, 2)
    start_relay(clean)
    broker = redis.Redis.from_url(clean.broker_url)
    wait_for(lambda: broker.hlen(index_of("article:4", clean.partitions)) == 1, 30, "the relay's push")
    with engine.connect() as conn:
        assert seqproc.preview_article(conn, 4, user_id=2).like_count == 1


def test_a_key_no_domain_owns_is_refused(clean: Settings, engine: Engine) -> None:
    with engine.connect() as conn:
        with pytest.raises(InvalidEvent, match="no domain owns 'nothing'"):
            seqproc.preview(conn, "nothing:1")
        with pytest.raises(InvalidEvent, match="not a valid article_id"):
            seqproc.preview(conn, "article:x")
        with pytest.raises(InvalidEvent, match="key"):
            seqproc.preview(conn, "article")


def test_without_the_index_a_push_writes_none_and_a_preview_is_the_applied_state(
    clean: Settings, engine: Engine
) -> None:
    seqproc.configure(clean.model_copy(update={"pending_ttl_s": 0}))
    try:
        seqproc.like(8, 1)
        assert redis.Redis.from_url(clean.broker_url).exists(index_of("article:8", clean.partitions)) == 0
        with engine.connect() as conn:
            assert seqproc.preview_article(conn, 8, user_id=1).like_count == 0
    finally:
        seqproc.configure(clean)


def test_an_event_committed_while_the_preview_reads_counts_once(
    clean: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker commits a pending reservation right after the preview loaded the state (before it looked at the
    ledger again): the preview reads the state again and counts it once, not zero times."""
    from seqproc.domains import stock

    with engine.begin() as conn:
        apply_partitions(conn, [PartitionBatch(0, produce([Restock(product_id=9, quantity=2)]), epoch=None)])
    receipt = seqproc.reserve(9, 1, reservation_id="during")
    raw = redis.Redis.from_url(clean.broker_url).hgetall(index_of("product:9", clean.partitions))
    [pending] = pending_events(raw, "product:9")
    assert pending.id == receipt.event_id
    original = stock.domain._load
    assert original is not None
    loads = []

    def load_then_commit(conn: Any, keys: Any, events: Any) -> Any:
        states = original(conn, keys, events)
        loads.append(states)
        if len(loads) == 1:  # the worker commits between this load and the ledger's second look
            with engine.begin() as other:
                apply_partitions(other, [PartitionBatch(0, [pending], epoch=None)])
        return states

    monkeypatch.setattr(stock.domain, "_load", load_then_commit)
    with engine.connect() as conn:
        shown = seqproc.preview_product(conn, 9)
    assert (shown.available, shown.reserved, shown.pending) == (1, 1, [])
    assert len(loads) == 2  # read again once the ledger moved


@pytest.mark.parametrize("front", ["sync", "asyncio"])
def test_a_like_committed_before_the_count_is_read_counts_once(
    front: str, clean: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker commits a pending like after the preview loaded the article's pairs and looked at the ledger,
    before it read the applied count: the count holds the like, and so would the pending delta. The preview reads
    again and counts it once, not twice (found by the model check on a Redis Cluster, a worker applying meanwhile:
    ``tests/faults/test_cluster_model.py``)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from seqproc.producer import previews
    from seqproc.producer.aio import previews as aio_previews

    receipt = seqproc.like(9, 1)
    raw = redis.Redis.from_url(clean.broker_url).hgetall(index_of("article:9", clean.partitions))
    [pending] = pending_events(raw, "article:9")
    assert pending.id == receipt.event_id
    original = previews.predict
    found: list[Any] = []

    def predict_then_commit(*args: Any, **kwargs: Any) -> Any:
        preview = original(*args, **kwargs)
        found.append(preview)
        if len(found) == 1:  # the worker commits between the state's load and the count's read
            with engine.begin() as other:
                apply_partitions(other, [PartitionBatch(0, [pending], epoch=None)])
        return preview

    monkeypatch.setattr(previews, "predict", predict_then_commit)
    monkeypatch.setattr(aio_previews, "predict", predict_then_commit)
    if front == "sync":
        with engine.connect() as conn:
            shown = seqproc.preview_article(conn, 9, user_id=1)
    else:

        async def run() -> Any:
            async_engine = create_async_engine(engine.url)
            try:
                async with async_engine.connect() as conn:
                    return await seqproc.aio.preview_article(conn, 9, user_id=1)
            finally:
                await async_engine.dispose()

        shown = asyncio.run(run())
    assert (shown.like_count, shown.liked, shown.pending) == (1, True, [])
    assert [len(p.pending) for p in found] == [1, 0]  # read again once the like committed
