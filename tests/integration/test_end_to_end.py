"""End to end against PostgreSQL, Redis and real `seqproc worker` processes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter
from seqproc.models.tables.likes import ArticleLike
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker.ops.inspect import article_state, check_invariants, product_state
from tests.conftest import ROOT, publish_raw, settings_env, wait_for

pytestmark = pytest.mark.services


def test_likes_from_8_threads_with_10_percent_sent_twice(clean: Settings, start_worker, engine: Engine) -> None:
    start_worker(clean, "0-7")
    start_worker(clean, "8-15")
    articles = list(range(1, 51))
    threads, per_thread = 8, 625  # 5,000 events
    expected: dict[tuple[int, int], bool] = {}
    receipts: list[list[producer.Receipt]] = [[] for _ in range(threads)]
    resent = Counter[int]()

    def run(thread: int) -> None:
        rng = random.Random(thread)
        # Each thread acts for its own users, so the order per (article, user) is this thread's order.
        users = [thread * 1000 + u for u in range(1, 21)]
        for n in range(per_thread):
            article, user = rng.choice(articles), rng.choice(users)
            action = producer.like if rng.random() < 0.6 else producer.unlike
            key = f"t{thread}-{n}"
            receipts[thread].append(action(article, user, idempotency_key=key))
            expected[(article, user)] = action is producer.like
            if rng.random() < 0.1:  # a client retry: same request id
                receipts[thread].append(action(article, user, idempotency_key=key))
                resent[thread] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    flat = [r for rs in receipts for r in rs]
    outcomes = producer.wait_all(flat, timeout_s=120)
    statuses = Counter(o.status for o in outcomes)
    assert statuses["duplicate"] == sum(resent.values()) > 300
    assert statuses["rejected"] == 0  # one thread per user: never stale
    assert statuses["applied"] == threads * per_thread

    with engine.connect() as conn:
        rows = set(conn.execute(select(ArticleLike.article_id, ArticleLike.user_id)))
        assert rows == {pair for pair, liked in expected.items() if liked}
        for article in articles:
            state = article_state(conn, article)
            assert (
                state["like_count"] == state["likes"] == sum(1 for (a, _), v in expected.items() if a == article and v)
            )
        assert check_invariants(conn).ok


def test_200_reservations_against_stock_of_100(clean: Settings, start_worker, engine: Engine) -> None:
    start_worker(clean)
    assert producer.restock(42, 100).wait(timeout_s=30).status == "applied"
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(lambda i: producer.reserve(42, 1, reservation_id=f"r{i}"), range(200)))
    outcomes = producer.wait_all(receipts, timeout_s=60)
    assert Counter(o.status for o in outcomes) == {"applied": 100, "rejected": 100}
    assert {o.reason for o in outcomes if o.status == "rejected"} == {"insufficient_stock"}
    with engine.connect() as conn:
        state = product_state(conn, 42)
    assert (state["available"], state["reserved"], state["sold"]) == (0, 100, 0)
    # No commit can have taken it below zero on the way: the table refuses one.
    with pytest.raises(IntegrityError, match="available_non_negative"), engine.begin() as conn:
        conn.execute(text("UPDATE product_stock SET available = available - 1 WHERE product_id = 42"))


def test_stock_rules_end_to_end(clean: Settings, start_worker, engine: Engine) -> None:
    start_worker(clean)
    producer.restock(7, 5).wait(timeout_s=30)
    assert producer.reserve(7, 3, reservation_id="a").wait(timeout_s=30).status == "applied"
    assert producer.commit(7, "a").wait(timeout_s=30).status == "applied"
    assert producer.commit(7, "a").wait(timeout_s=30).status == "duplicate"
    unknown = producer.commit(7, "nope").wait(timeout_s=30)
    assert (unknown.status, unknown.reason) == ("rejected", "unknown_reservation")
    # A release that overtakes its reservation cancels it.
    producer.release(7, "b").wait(timeout_s=30)
    late = producer.reserve(7, 1, reservation_id="b").wait(timeout_s=30)
    assert (late.status, late.reason) == ("rejected", "cancelled")
    assert producer.reserve(7, 2, reservation_id="c").wait(timeout_s=30).status == "applied"
    assert producer.release(7, "c").wait(timeout_s=30).status == "applied"
    released = producer.commit(7, "c").wait(timeout_s=30)
    assert (released.status, released.reason) == ("rejected", "already_released")
    with engine.connect() as conn:
        state = product_state(conn, 7)
        assert (state["available"], state["reserved"], state["sold"], state["total_received"]) == (2, 0, 3, 5)
        assert check_invariants(conn).ok


def test_older_stamp_is_rejected_stale(clean: Settings, start_worker, engine: Engine) -> None:
    """An unlike issued before a like, delivered after it, changes nothing: the last action by stamp wins."""
    from seqproc.producer.build import build_event
    from seqproc.producer.publish import publisher_for

    start_worker(clean)
    unlike = build_event("unlike", {"article_id": 5, "user_id": 9})
    like = build_event("like", {"article_id": 5, "user_id": 9})
    assert unlike.stamp < like.stamp
    publisher = publisher_for(clean)
    [like_receipt] = publisher.publish([like])
    assert like_receipt.wait(timeout_s=30).status == "applied"
    [unlike_receipt] = publisher.publish([unlike])
    outcome = unlike_receipt.wait(timeout_s=30)
    assert (outcome.status, outcome.reason) == ("rejected", "stale")
    with engine.connect() as conn:
        assert article_state(conn, 5) | {} == {"article_id": 5, "like_count": 1, "likes": 1, "consistent": True}


def test_malformed_messages_are_dead_lettered_and_the_worker_keeps_going(
    clean: Settings, start_worker, engine: Engine
) -> None:
    worker = start_worker(clean)
    partition = partition_for(article_key(3), clean.partitions)
    queue = queue_name(partition)
    task = {"task": "seqproc.apply", "id": "bad-1", "lang": "py"}
    publish_raw(clean, queue, "this is not json", "application/json", task)
    publish_raw(clean, queue, b"\x80\x04\x95pickle", "application/x-python-serialize", dict(task, id="bad-2"))
    bad_event = {"type": "explode", "key": "k", "id": "i", "stamp": 1}
    publish_raw(clean, queue, json.dumps([[], {"events": [bad_event]}, {}]), "application/json", dict(task, id="bad-3"))
    publish_raw(clean, queue, json.dumps([[], {}, {}]), "application/json", dict(task, task="os.system", id="bad-4"))
    publish_raw(clean, queue, "{}", "application/json", {})

    assert producer.like(3, 1).wait(timeout_s=30).status == "applied"

    with engine.connect() as conn:
        letters = wait_for(
            lambda: (
                (rows := conn.execute(select(DeadLetter.error, DeadLetter.queue)).all()) and len(rows) >= 5 and rows
            ),
            30,
            "five dead letters",
        )
        conn.rollback()
    errors = " | ".join(error for error, _ in letters)
    assert len(letters) == 5
    assert "not a seqproc message" in errors
    assert "only application/json" in errors
    assert "must be one of like" in errors
    assert "unknown task 'os.system'" in errors
    assert "no task header" in errors
    assert {q for _, q in letters} == {queue}
    assert worker.process.poll() is None
    with engine.connect() as conn:
        assert article_state(conn, 3)["like_count"] == 1


def test_killed_worker_loses_nothing_and_committed_events_are_reported_duplicate(
    clean: Settings, start_worker, engine: Engine
) -> None:
    """The worker dies right after its first commit, before acking: the restarted worker gets the message back at
    once (takeover restores the dead owner's unacked messages) and reports its events as duplicates."""
    dying = start_worker(clean, SEQPROC_FAULT_EXIT_AFTER_COMMITS="1")
    receipts = producer.send_many([{"type": "like", "article_id": 11, "user_id": u} for u in range(1, 6)])
    assert len({r.partition for r in receipts}) == 1
    wait_for(lambda: dying.process.poll() is not None, 30, "the worker to die after its commit")
    assert dying.process.returncode == 137
    with engine.connect() as conn:
        assert article_state(conn, 11)["like_count"] == 5  # committed before the crash

    start_worker(clean)
    outcomes = producer.wait_all(receipts, timeout_s=60)
    assert {o.status for o in outcomes} == {"duplicate"}
    assert {o.first.status for o in outcomes if o.first} == {"applied"}
    with engine.connect() as conn:
        assert article_state(conn, 11) == {"article_id": 11, "like_count": 5, "likes": 5, "consistent": True}


def test_sigkill_mid_stream_redelivers_within_60_seconds(clean: Settings, start_worker, engine: Engine) -> None:
    worker = start_worker(clean)
    receipts = []
    for n in range(300):
        receipts.append(producer.like(20 + n % 5, n + 1))
        if n == 150:
            worker.kill()
    start_worker(clean)
    outcomes = producer.wait_all(receipts, timeout_s=60)
    assert all(o.effective.status == "applied" for o in outcomes)
    with engine.connect() as conn:
        assert sum(article_state(conn, a)["like_count"] for a in range(20, 25)) == 300
        assert check_invariants(conn).ok


def test_database_connections_killed_mid_stream_are_retried_in_place(
    clean: Settings, start_worker, engine: Engine
) -> None:
    worker = start_worker(clean)
    receipts = []
    killed = 0
    for n in range(400):
        receipts.append(producer.like(30, n + 1))
        if n % 100 == 50:
            with engine.begin() as conn:
                # The worker's sessions, by the name it gives them (``seqproc <pid>/<run token>``).
                killed += conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name LIKE :name AND datname = current_database()"
                    ),
                    {"name": f"seqproc {worker.pid}/%"},
                ).scalar_one()
    assert killed >= 1  # the faults were injected: the worker's pooled connection died under it
    outcomes = producer.wait_all(receipts, timeout_s=60)
    assert Counter(o.effective.status for o in outcomes) == {"applied": 400}
    with engine.connect() as conn:
        assert article_state(conn, 30)["like_count"] == 400


def test_cli_enqueue_and_show(clean: Settings, start_worker) -> None:
    start_worker(clean)
    env = settings_env(clean)

    def seqproc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "seqproc", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    sent = seqproc("enqueue", "restock", "8", "10", "--wait", "30", "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["outcome"] == {"status": "applied"}
    assert seqproc("enqueue", "reserve", "8", "4", "res-1", "--wait", "30").returncode == 0
    assert seqproc("enqueue", "like", "8", "1", "--wait", "30").returncode == 0
    product_json = json.loads(seqproc("show", "product", "8", "--json").stdout)
    assert {k: product_json[k] for k in ("product_id", "available", "reserved", "sold")} == {
        "product_id": 8,
        "available": 6,
        "reserved": 4,
        "sold": 0,
    }
    article_json = json.loads(seqproc("show", "article", "8", "--json").stdout)
    assert (article_json["article_id"], article_json["like_count"], article_json["likes"]) == (8, 1, 1)
    bad = seqproc("enqueue", "reserve", "8", "0", "res-2")
    assert bad.returncode == 4
    assert bad.stderr.strip().count("\n") == 0
    assert "quantity" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_partition_count_is_fixed_and_changes_only_when_drained(clean: Settings, engine: Engine) -> None:
    def seqproc(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "seqproc", *args],
            cwd=ROOT,
            env=settings_env(clean, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert seqproc("partitions", "set", "16").returncode == 0  # records 16 if nothing was recorded yet
    refused = seqproc("worker", "--partitions", "0-3", SEQPROC_PARTITIONS="8")
    assert refused.returncode == 3
    assert "set up with 16 partitions" in refused.stderr
    assert "Traceback" not in refused.stderr

    producer.like(1, 1)  # no worker runs: the event stays queued
    busy = seqproc("partitions", "set", "8")
    assert busy.returncode == 3
    assert "while events are queued" in busy.stderr
    redis.Redis.from_url(clean.broker_url).flushdb()  # drained
    try:
        changed = seqproc("partitions", "set", "8")
        assert changed.returncode == 0, changed.stderr
        assert "16 -> 8" in changed.stdout
    finally:
        assert seqproc("partitions", "set", "16").returncode == 0
