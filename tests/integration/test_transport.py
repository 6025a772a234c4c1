"""The reliable fetch of seqproc's Redis transport, on the real Redis: a message is always in its queue or unacked."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from kombu import Connection
from sqlalchemy import Engine, select

from seqproc import producer
from seqproc.models import transport
from seqproc.models.celery import celery_config
from seqproc.models.envelope import task_envelope
from seqproc.models.resp import ReplyLost
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter
from seqproc.models.transport import fetched
from seqproc.models.wire import (
    article_key,
    bell_key,
    lease_key,
    partition_for,
    partition_of_queue,
    queue_name,
    unacked_index_key,
    unacked_key,
)
from seqproc.producer.build import build_event
from seqproc.worker.ops.inspect import article_state
from seqproc.worker.ownership.partitions import claim, restore_unacked
from seqproc.worker.ownership.static import StaticOwnership, fence
from tests.conftest import wait_for
from tests.faults.landing import unacked_count

pytestmark = pytest.mark.services


def connection(settings: Settings, **options: object) -> Connection:
    """A connection on seqproc's transport; ``options`` are transport options (as the runner sets them)."""
    conf = celery_config(settings)
    return Connection(
        settings.broker_url,
        transport=conf["broker_transport"],
        transport_options={**conf["broker_transport_options"], **options},
    )


def test_a_fetch_records_each_message_in_unacked_in_the_same_step(clean: Settings) -> None:
    """A worker that dies right after fetching (before delivering, before acking) loses nothing: each message is
    in unacked, and the takeover restore puts them back at the head of the queue, in order."""
    receipts = [producer.like(7, user) for user in range(1, 11)]
    queue = receipts[0].queue
    client = redis.Redis.from_url(clean.broker_url)
    assert client.llen(queue) == 10
    assert client.llen(bell_key(queue)) == 1  # the producer rang the bell

    with connection(clean) as conn:
        channel = conn.default_channel
        taken = channel._fetch([queue], 4)  # the "worker" takes 4 and dies here
        assert len(taken) == 4
        assert client.llen(queue) == 6
        assert unacked_count(client) == 4
        assert client.zcard(unacked_index_key(queue)) == 4
        stored = [json.loads(v) for v in client.hvals(unacked_key(queue))]
        assert {entry[2] for entry in stored} == {queue}  # [message, exchange, routing_key], as kombu stores it
        # The message is stored exactly as sent: a 19-digit stamp survives (no float round trip in Lua).
        sent_stamps = {r.stamp for r in receipts[:4]}
        stored_stamps = {json.loads(entry[0]["body"])[1]["events"][0]["stamp"] for entry in stored}
        assert stored_stamps == sent_stamps

        assert restore_unacked(channel, [queue]) == 4
    assert unacked_count(client) == 0
    assert client.llen(queue) == 10
    # RPOP order (the consuming end first) is the producer's order again.
    order = [json.loads(json.loads(raw)["body"])[1]["events"][0]["user_id"] for raw in client.lrange(queue, 0, -1)]
    assert list(reversed(order)) == list(range(1, 11))


def test_a_restore_in_chunks_keeps_the_order_and_restores_each_message_once(
    clean: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A takeover's restore sends one script call per chunk of a queue's held messages (not one per message): in
    chunks of 3 here, 10 held messages come back in their order, each once, marked redelivered; a tag acked between
    the read and the restore (gone from the hash) is not pushed again, and the visibility restore does the same."""
    monkeypatch.setattr(transport, "RESTORE_CHUNK", 3)
    receipts = [producer.like(7, user) for user in range(1, 13)]
    queue = receipts[0].queue
    client = redis.Redis.from_url(clean.broker_url)
    with connection(clean) as conn:
        channel = conn.default_channel
        held = channel._fetch([queue], 10)
        tags = [fetched(q, raw).delivery_tag for q, raw in held]
        client.hdel(unacked_key(queue), tags[4])  # acked meanwhile: users 1-4 and 6-10 are still held
        calls = []
        real_eval = redis.Redis.eval

        def counted(self: redis.Redis, script: str, numkeys: int, *args: Any) -> Any:
            calls.append(script)
            return real_eval(self, script, numkeys, *args)

        monkeypatch.setattr(redis.Redis, "eval", counted)
        assert restore_unacked(channel, [queue]) == 9
    assert len(calls) == 4  # ceil(10 / 3) chunks
    assert unacked_count(client) == 0
    assert client.zcard(unacked_index_key(queue)) == 0
    raws = client.lrange(queue, 0, -1)
    assert list(reversed([user_of(raw) for raw in raws])) == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]
    restored = [json.loads(raw) for raw in raws[-9:]]
    assert all(m["properties"]["delivery_info"]["redelivered"] for m in restored)

    # The visibility restore: every held message older than the timeout, in windows of `num` (newest first).
    with connection(clean) as conn:
        channel = conn.default_channel
        assert len(channel._fetch([queue], 11)) == 11
        channel._active_queues.append(queue)  # as a consumer of it (kombu keeps the list there)
        channel.qos.visibility_timeout = 0
        channel.qos.restore_visible(num=4, interval=1)  # the 4 newest, then the rest, oldest next in line
        channel.qos.restore_visible(num=4, interval=1)
        channel.qos.restore_visible(num=4, interval=1)
    assert unacked_count(client) == 0
    assert list(reversed([user_of(raw) for raw in client.lrange(queue, 0, -1)])) == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]


def test_a_fetch_takes_nothing_from_a_queue_whose_lease_moved(clean: Settings) -> None:
    """The fetch checks the lease inside the script: a worker paused after deciding to fetch (its own view says the
    partition is still its) takes nothing once another worker holds the lease, so it never holds newer events of
    a key while the new owner applies later ones."""
    receipts = [producer.like(11, user) for user in range(1, 6)]
    other = [producer.like(article, 1) for article in range(12, 40)]
    queue = receipts[0].queue
    elsewhere = next(r.queue for r in other if r.queue != queue)
    client = redis.Redis.from_url(clean.broker_url)
    depth = {q: client.llen(q) for q in (queue, elsewhere)}
    client.set(lease_key(queue), "worker-a/2/new")  # taken over while b was paused
    client.set(lease_key(elsewhere), "worker-b/1/old")  # still b's

    with connection(clean, fetch_owner="worker-b/1/old") as conn:
        taken = conn.default_channel._fetch([queue, elsewhere], 100)
    assert {q for q, _ in taken} == {elsewhere}  # only the queue whose lease is still b's
    assert len(taken) == depth[elsewhere]
    assert client.llen(queue) == depth[queue]  # untouched, in order, for the new owner
    assert unacked_count(client) == depth[elsewhere]

    client.delete(lease_key(elsewhere))  # expired, not yet taken by anyone: not b's either
    client.set(lease_key(queue), "worker-b/1/old")  # and b gets this one back
    with connection(clean, fetch_owner="worker-b/1/old") as conn:
        taken = conn.default_channel._fetch([queue, elsewhere], 100)
    assert [q for q, _ in taken] == [queue] * depth[queue]
    with connection(clean) as conn:  # no owner token (a producer, the CLI): no check at all
        assert restore_unacked(conn.default_channel, [queue]) == depth[queue]
        assert len(conn.default_channel._fetch([queue], 100)) == depth[queue]


def user_of(raw: bytes) -> int:
    """The user of the first event of a message (a like)."""
    return int(json.loads(json.loads(raw)["body"])[1]["events"][0]["user_id"])


def test_a_fixed_worker_taken_over_fetches_nothing_more_from_its_queue(clean: Settings, engine: Engine) -> None:
    """Two fixed workers (``--partitions N``) on one queue, each as the runner starts one: claim, fence, restore, then
    fetch with its owner token. Once b has claimed the partition, set its fence and restored a's unacked messages,
    a fetches nothing more from the queue though it has not noticed the takeover yet (it notices at its next
    heartbeat or commit). Without the fence, a took the newer messages and gave them back, once fenced, behind
    the later events b had applied meanwhile. b gets every message, in order; a's give-back of what it held only
    adds copies of messages b has (duplicates)."""
    receipts = [producer.like(11, user) for user in range(1, 9)]
    queue = receipts[0].queue
    partition = partition_of_queue(queue)
    assert partition is not None
    a, b = "fixed-a/1/aaaa", "fixed-b/2/bbbb"
    client = redis.Redis.from_url(clean.broker_url)
    with connection(clean, fetch_owner=a) as conn_a, connection(clean, fetch_owner=b) as conn_b:
        chan_a, chan_b = conn_a.default_channel, conn_b.default_channel
        claim(engine, [partition], owner=a, total=clean.partitions)
        fence(chan_a, [partition], a)
        held = [fetched(q, raw) for q, raw in chan_a._fetch([queue], 3)]  # a's batch in hand: users 1-3
        assert [user_of(m.raw) for m in held] == [1, 2, 3]

        claim(engine, [partition], owner=b, total=clean.partitions)  # epoch raised: a can no longer commit
        fence(chan_b, [partition], b)
        assert client.get(lease_key(queue)) == b.encode()
        assert restore_unacked(chan_b, [queue]) == 3
        assert chan_a._fetch([queue], 100) == []  # a, still unaware: nothing (without the fence: users 1-8)
        taken = chan_b._fetch([queue], 100)
        assert [user_of(raw) for _, raw in taken] == list(range(1, 9))  # every message once, in order

        chan_a.give_back_fetched(held)  # a, refused at its commit, gives back what it held
        assert [user_of(raw) for raw in reversed(client.lrange(queue, 0, -1))] == [1, 2, 3]  # copies b has
        assert chan_a._fetch([queue], 100) == []


def test_a_fixed_workers_fences_are_kept_given_up_and_released(clean: Settings, engine: Engine) -> None:
    """Each tick, a fixed worker sets again a fence of a partition it holds that the broker lost, never over another
    worker's, and deletes its fence of a partition it gave up; at a graceful exit it deletes those still its own."""
    a, b = "fixed-a/1/aaaa", "fixed-b/2/bbbb"
    client = redis.Redis.from_url(clean.broker_url)
    keys = {p: lease_key(queue_name(p)) for p in (3, 4)}
    with connection(clean, fetch_owner=a) as conn_a, connection(clean, fetch_owner=b) as conn_b:
        chan_a, chan_b = conn_a.default_channel, conn_b.default_channel
        holder_b = StaticOwnership(clean, engine, b, [3, 4], {3: 1, 4: 1}, spec="3-4")
        fence(chan_b, [3, 4], b)
        client.delete(keys[3])  # the broker lost it (a failover, a restart without persistence)
        holder_b.keep_fences(chan_b)
        assert client.mget(keys[3], keys[4]) == [b.encode(), b.encode()]

        fence(chan_a, [3], a)  # a's claim set its fence after b's: b fetches nothing from 3...
        holder_b.keep_fences(chan_b)
        assert client.get(keys[3]) == a.encode()  # ...and does not take it back over a's
        given_up = StaticOwnership(clean, engine, a, [3], {}, spec="3")  # a, fenced, gave partition 3 up
        given_up.keep_fences(chan_a)
        assert client.get(keys[3]) is None
        holder_b.keep_fences(chan_b)  # the holder sets it again at its next tick
        assert client.get(keys[3]) == b.encode()
        given_up.keep_fences(chan_a)
        assert client.get(keys[3]) == b.encode()  # not a's to delete

    client.set(keys[4], a)  # taken by a meanwhile
    holder_b.release_fences()
    assert client.mget(keys[3], keys[4]) == [None, a.encode()]


def test_a_fetch_that_stops_at_its_limit_rings_for_what_is_left(clean: Settings) -> None:
    """The wait that led to a fetch consumed the bells; a fetch that stops at its limit, with the current queue
    just emptied but a later one still holding messages, rings a bell, so that the next wait does not sleep."""
    receipts = [producer.like(article, 1) for article in range(50, 90)]
    by_queue: dict[str, int] = {}
    for receipt in receipts:
        by_queue[receipt.queue] = by_queue.get(receipt.queue, 0) + 1
    first, second = sorted(by_queue)[:2]
    client = redis.Redis.from_url(clean.broker_url)
    client.delete(*(bell_key(q) for q in by_queue))  # consumed by the worker's BRPOP
    with connection(clean) as conn:
        channel = conn.default_channel
        taken = channel._fetch([first, second], by_queue[first])  # exactly the first queue's messages
        # ... and says so: the worker's batcher then waits for a full batch rather than flushing at the pause
        # between two fetches of a backlog.
        assert channel.fetch_left_more
        assert {q for q, _ in taken} == {first}
        assert client.llen(second) == by_queue[second]
        assert client.llen(bell_key(first)) + client.llen(bell_key(second)) == 1  # rung once, for what is left
        rest = channel._fetch([first, second], 1000)
        assert [q for q, _ in rest] == [second] * by_queue[second]
        assert not channel.fetch_left_more  # nothing left: arrivals stopped


def test_messages_are_consumed_even_when_their_bell_was_lost(clean: Settings, start_worker, engine: Engine) -> None:
    receipts = [producer.like(8, user) for user in range(1, 6)]
    client = redis.Redis.from_url(clean.broker_url)
    client.delete(bell_key(receipts[0].queue))  # as if a worker popped the bell and died
    start_worker(clean)
    outcomes = producer.wait_all(receipts, timeout_s=30)
    assert {o.status for o in outcomes} == {"applied"}
    with engine.connect() as conn:
        assert article_state(conn, 8)["like_count"] == 5


@pytest.mark.parametrize(
    ("raw", "stored_as"),
    [
        (b"\x00\x01 not json at all", "base64:"),
        # JSON nested deeper than the parser recurses: it must not stop the fetch (and with it the partition).
        (b"[" * 100_000 + b"]" * 100_000, "[[["),
    ],
    ids=["not-json", "nested-too-deep"],
)
def test_bytes_that_are_not_a_message_are_dead_lettered(
    clean: Settings, start_worker, engine: Engine, raw: bytes, stored_as: str
) -> None:
    worker = start_worker(clean)
    queue = queue_name(partition_for(article_key(9), clean.partitions))
    client = redis.Redis.from_url(clean.broker_url)
    client.lpush(queue, raw)
    client.lpush(bell_key(queue), "1")
    assert producer.like(9, 1).wait(timeout_s=30).status == "applied"
    with engine.connect() as conn:
        letters = wait_for(lambda: conn.execute(select(DeadLetter.error, DeadLetter.body)).all(), 30, "a dead letter")
    assert len(letters) == 1
    assert letters[0].body.startswith(stored_as)
    assert worker.process.poll() is None


class Recorder:
    """A chunk consumer that holds what it is given and never applies it: ``room`` messages at a time."""

    def __init__(self, room: int, *, filling: bool) -> None:
        self._room = room
        self._filling = filling
        self.deliveries: list[tuple[int, bool]] = []

    def room(self) -> int:
        return self._room

    def deliver(self, chunk: list[Any], *, more: bool = False) -> None:
        self.deliveries.append((len(chunk), more))

    def filling(self) -> bool:
        return self._filling

    def fetches_itself(self) -> bool:
        return self.fetching_itself

    fetching_itself = False


@pytest.mark.parametrize("filling", [True, False])
def test_a_backlog_is_fetched_in_a_row_while_the_batch_fills(clean: Settings, filling: bool) -> None:
    """Each fetch tells the consumer whether it left messages behind; while it did and the consumer is filling a
    batch, the next fetch follows at once, without another wait on the bells; once the consumer applied its batch
    (or is stopping), the event loop gets its turn first."""
    receipts = [producer.like(13, user) for user in range(1, 11)]
    queue = receipts[0].queue
    with connection(clean) as conn:
        channel = conn.default_channel
        channel._active_queues.append(queue)
        channel._update_queue_cycle()
        recorder = Recorder(4, filling=filling)
        channel.chunk_consumer = recorder  # type: ignore[assignment]
        client = channel.client
        client.connection = client.connection_pool.get_connection()  # what kombu's poller does on registering
        channel._brpop_start(timeout=1)
        assert channel._brpop_read()  # the producer's bell: fetch
        if filling:
            assert recorder.deliveries == [(4, True), (4, True), (2, False)]
        else:
            assert recorder.deliveries == [(4, True)]
            channel._brpop_start(timeout=1)
            assert channel._brpop_read()  # the bell the fetch rang for what it left
            assert recorder.deliveries == [(4, True), (4, True)]
        channel.chunk_consumer = None


def test_while_a_batch_is_open_its_timer_fetches_and_no_bell_is_waited_on(clean: Settings) -> None:
    """A consumer holding an open batch fetches on its own timer: the channel arms no wait on the bells (no wake-up
    per message); one ``fetch_now`` then takes everything that arrived meanwhile, in one round trip."""
    first = producer.like(14, 1)
    queue = first.queue
    with connection(clean) as conn:
        channel = conn.default_channel
        channel._active_queues.append(queue)
        channel._update_queue_cycle()
        recorder = Recorder(64, filling=True)
        recorder.fetching_itself = True
        channel.chunk_consumer = recorder  # type: ignore[assignment]
        client = channel.client
        client.connection = client.connection_pool.get_connection()
        channel._brpop_start(timeout=1)
        assert not channel._in_poll  # no BRPOP sent
        for user in range(2, 8):
            producer.like(14, user)
        assert channel.fetch_now() == 7
        assert recorder.deliveries == [(7, False)]
        assert channel.fetch_now() == 0  # nothing arrived since: the batcher applies its batch
        assert recorder.deliveries[-1] == (0, False)
        recorder.fetching_itself = False  # the batch applied: the channel waits on the bells again
        producer.like(14, 8)
        channel._brpop_start(timeout=1)
        assert channel._in_poll
        assert channel._brpop_read()
        assert recorder.deliveries[-1] == (1, False)
        channel.chunk_consumer = None


class Restoring(Recorder):
    """A recorder of delivery tags that, asked to, puts back what ``unacked`` holds for its queue (as the batcher
    does)."""

    def __init__(self, queue: str) -> None:
        super().__init__(64, filling=False)
        self.queue = queue
        self.restores = 0
        self.tags: list[str] = []

    def deliver(self, chunk: list[Any], *, more: bool = False) -> None:
        super().deliver(chunk, more=more)
        self.tags += [message.delivery_tag for message in chunk]

    def restore_stranded(self, channel: Any) -> None:
        self.restores += 1
        restore_unacked(channel, [self.queue])


def test_a_fetch_whose_reply_was_lost_has_its_messages_back_in_line_before_anything_newer(clean: Settings) -> None:
    """The fetch script ran (the messages moved to ``unacked``) but its reply never came: the channel says so
    (``ReplyLost``) and, before its next fetch, has the consumer put them back at the head of the queue, so that
    they are delivered before what was sent after them, not behind it once the visibility timeout restores them."""
    queue = queue_name(partition_for(article_key(17), clean.partitions))
    client = redis.Redis.from_url(clean.broker_url)
    padding = "x" * 2_000_000  # the reply of 20 of these cannot be read in 20 ms
    older = []
    for user in range(1, 21):
        text = task_envelope(
            queue,
            partition_of_queue(queue) or 0,
            [build_event("like", {"article_id": 17, "user_id": user})],
            task_id=f"t{user}",
        )
        older.append(json.loads(text)["properties"]["delivery_tag"])
        client.lpush(queue, text.replace('"argsrepr": "()"', f'"argsrepr": "{padding}"'))
    with connection(clean) as conn:
        channel = conn.default_channel
        channel._active_queues.append(queue)
        channel._update_queue_cycle()
        restoring = Restoring(queue)
        channel.chunk_consumer = restoring  # type: ignore[assignment]
        channel._held().run(b"*1\r\n$4\r\nPING\r\n")
        held = channel._held()._connection
        timeout_s = held.socket_timeout
        held.socket_timeout = 0.02
        held._sock.settimeout(0.02)
        with pytest.raises(ReplyLost):
            channel.fetch_now()
        held.socket_timeout = timeout_s  # disconnected: it connects again with its own timeout
        assert channel.fetch_reply_lost
        assert client.llen(queue) == 0  # the fetch ran: everything is in unacked, delivered to nobody
        assert unacked_count(client) == 20
        newer = task_envelope(queue, 0, [build_event("like", {"article_id": 17, "user_id": 99})], task_id="t99")
        client.lpush(queue, newer)
        assert channel.fetch_now() == 21  # the restored ones, then the newer one (the consumer holds 64 at most)
        assert restoring.restores == 1
        assert not channel.fetch_reply_lost
        assert channel.fetch_now() == 0
        channel.chunk_consumer = None
    assert restoring.tags == [*older, json.loads(newer)["properties"]["delivery_tag"]]
