"""``examples/blog_counter``: a domain whose ``save`` updates a column of the application's own table
(``blog_post.like_count``), in the worker's transaction, so the count is exactly once with the ledger: through a
worker that dies between its commit and its ack (its events come back, and are duplicates), concurrent producers with
retried requests, and the application editing the same rows meanwhile."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, text

import seqproc
from examples.blog_counter.blog import Like, Unlike, create_post, create_table
from seqproc.models.settings import Settings
from tests.conftest import ROOT, WorkerProcess, settings_env, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

DOMAINS = "examples.blog_counter.blog"
THREADS, LIKES, UNLIKES, RETRIED = 8, 40, 5, 5


@pytest.fixture
def blog(engine: Engine) -> Iterator[None]:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS blog_post"))
    yield
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS blog_post"))


def post_row(engine: Engine, post_id: int) -> tuple[str, int]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT title, like_count FROM blog_post WHERE id = :id"), {"id": post_id}).one()
    return row.title, row.like_count


def test_save_counts_each_like_once_in_the_applications_own_table(
    clean: Settings, engine: Engine, blog: None, start_worker: Callable[..., WorkerProcess]
) -> None:
    with engine.begin() as conn:  # the application's migration and its own rows
        create_table(conn)
        hot, quiet = create_post(conn, "Hot"), create_post(conn, "Quiet")

    # A worker that dies right after its first commit, before acking: the 50 likes are counted, their message stays
    # unacknowledged.
    dying = start_worker(clean, SEQPROC_DOMAINS=DOMAINS, SEQPROC_FAULT_EXIT_AFTER_COMMITS="1")
    first_wave = seqproc.send_many([Like(post_id=hot) for _ in range(50)])
    wait_for(lambda: dying.process.poll() is not None, 30, "the worker to die after its commit")
    assert dying.process.returncode == 137
    assert post_row(engine, hot) == ("Hot", 50)

    # The next worker gets that message back first (duplicates) and applies a concurrent stream, while the
    # application renames the post: the relative update touches like_count only.
    start_worker(clean, SEQPROC_DOMAINS=DOMAINS)
    receipts: list[list[seqproc.Receipt]] = [[] for _ in range(THREADS)]

    def producer(n: int) -> None:
        for i in range(LIKES):
            receipts[n].append(seqproc.send(Like(post_id=hot)))
            if i < RETRIED:  # a client's retry with its request id: one like
                key = f"req-{n}-{i}"
                receipts[n].append(seqproc.send(Like(post_id=hot), idempotency_key=key))
                receipts[n].append(seqproc.send(Like(post_id=hot), idempotency_key=key))
            if i % (LIKES // UNLIKES) == 0:
                receipts[n].append(seqproc.send(Unlike(post_id=hot)))

    def editor() -> None:
        for n in range(30):
            with engine.begin() as conn:
                conn.execute(text("UPDATE blog_post SET title = :t WHERE id = :id"), {"t": f"Hot, edit {n}", "id": hot})

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(THREADS)]
    threads.append(threading.Thread(target=editor))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    refused = [seqproc.send(Like(post_id=10**12)), seqproc.send(Unlike(post_id=quiet))]

    first = seqproc.wait_all(first_wave, timeout_s=60)
    assert {(o.status, o.first and o.first.status) for o in first} == {("duplicate", "applied")}
    outcomes = seqproc.wait_all([r for mine in receipts for r in mine], timeout_s=60)
    statuses = [o.status for o in outcomes]
    expected = 50 + THREADS * (LIKES + RETRIED - UNLIKES)
    assert statuses.count("duplicate") == THREADS * RETRIED
    assert statuses.count("applied") == THREADS * (LIKES + 2 * RETRIED + UNLIKES) - THREADS * RETRIED
    assert [(o.status, o.reason) for o in seqproc.wait_all(refused, timeout_s=30)] == [
        ("rejected", "unknown_post"),
        ("rejected", "no_likes"),
    ]
    assert post_row(engine, hot) == ("Hot, edit 29", expected)
    assert post_row(engine, quiet) == ("Quiet", 0)
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT count(*) FROM idempotency_ledger WHERE event_type LIKE 'post_likes.%'"))
        # Each key once: the first wave, each thread's likes, retried likes and unlikes, the two refused.
        assert keys.scalar_one() == 50 + THREADS * (LIKES + RETRIED + UNLIKES) + 2


def test_the_example_script_runs(
    clean: Settings, engine: Engine, blog: None, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(clean, SEQPROC_DOMAINS=DOMAINS)
    done = subprocess.run(
        [sys.executable, "-m", "examples.blog_counter"],
        cwd=ROOT,
        env=settings_env(clean),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        *["post_likes.like applied -"] * 4,
        "post_likes.like duplicate -",
        "post_likes.unlike applied -",
        "post_likes.like rejected unknown_post",
        "blog_post 1 'Hello, hot rows': like_count 3",
    ]
