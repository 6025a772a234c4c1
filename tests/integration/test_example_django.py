"""The Django example (``examples/django_shop``) under a real ``gunicorn`` with three worker processes, hit by a few
hundred concurrent HTTP requests, with a real ``seqproc worker`` and ``seqproc relay``.

Some checkouts are declined and roll back. Every committed event must be applied exactly once, every rolled-back
one never: the ledger holds exactly the committed keys, each order has its reservation and no declined one has any,
like counts equal their rows, and stock balances.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from seqproc import producer
from seqproc.models.settings import Settings
from tests.conftest import RelayProcess, WorkerProcess, free_port, wait_for
from tests.integration.django_example import (
    EXAMPLE_DIR,
    SHOP_DATABASE_URL,
    example_env,
    serve_shop,
)

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

pytest.importorskip("django")
pytest.importorskip("gunicorn")

GUNICORN_WORKERS = 3
CLIENT_THREADS = 24
PRODUCT, STOCK = 51, 100
ARTICLES = (61, 62, 63)
DECLINED_CARD = "4000-0000-0000-0002"  # the example's card that its payment step declines
SECRET = "s3cr3t-db-password"


@pytest.fixture
def shop_url(clean: Settings, tmp_path: Path) -> Iterator[str]:
    """A running gunicorn serving the example, over clean databases; stopped (SIGTERM) at the end."""
    with serve_shop(clean, tmp_path / "gunicorn.log", port=free_port(), workers=GUNICORN_WORKERS) as url:
        yield url


def ledger_keys(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT key FROM idempotency_ledger")).scalars())


def partition_totals(engine: Engine) -> tuple[int, int, int]:
    """Events applied, duplicates and rejections, over every partition (the workers' running totals)."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT sum(applied), sum(duplicates), sum(rejected) FROM partition")).one()
        return int(row[0]), int(row[1]), int(row[2])


def test_concurrent_requests_under_gunicorn_apply_committed_events_once_and_rolled_back_ones_never(
    clean: Settings,
    shop_url: str,
    engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    start_worker(clean)
    start_relay(clean.model_copy(update={"outbox_database_url": SHOP_DATABASE_URL}))
    assert producer.restock(PRODUCT, STOCK).wait(30).status == "applied"
    totals_before = partition_totals(engine)

    rng = random.Random(7)
    likes = [(rng.choice(ARTICLES), rng.randint(1, 40), uuid.uuid4().hex) for _ in range(150)]
    retries = rng.sample(likes, 30)  # a client that timed out and sent the same request again
    checkouts = [(rng.randint(1, 2), DECLINED_CARD if n % 4 == 0 else "4242") for n in range(140)]
    requests: list[tuple[str, Any]] = [("like", like) for like in [*likes, *retries]]
    requests += [("checkout", checkout) for checkout in checkouts]
    rng.shuffle(requests)

    with httpx.Client(base_url=shop_url, timeout=30, limits=httpx.Limits(max_connections=CLIENT_THREADS)) as client:

        def send(request: tuple[str, Any]) -> tuple[str, Any, httpx.Response]:
            kind, args = request
            if kind == "like":
                article, user, key = args
                response = client.post(
                    f"/articles/{article}/like", json={"user_id": user}, headers={"Idempotency-Key": key}
                )
            else:
                quantity, card = args
                response = client.post("/checkout", json={"product_id": PRODUCT, "quantity": quantity, "card": card})
            return kind, args, response

        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            answered = list(pool.map(send, requests))

        statuses = Counter((kind, r.status_code) for kind, _, r in answered)
        declined = sum(1 for _, card in checkouts if card == DECLINED_CARD)
        assert statuses == {
            ("like", 202): len(likes) + len(retries),
            ("checkout", 402): declined,
            ("checkout", 201): len(checkouts) - declined,
        }
        orders = {
            r.json()["order_id"]: (args[0], r.json()["reservation_id"])
            for k, args, r in answered
            if k == "checkout" and r.status_code == 201
        }
        expected = {f"like:{key}" for _, _, key in likes} | {f"reserve:{rid}" for _, rid in orders.values()}
        wait_for(lambda: ledger_keys(engine) >= expected, 45, "every committed event applied", interval_s=0.2)

        # Pay every order whose reservation was held, each twice at once (a double click): one commit each.
        with engine.connect() as conn:
            status = dict(conn.execute(text("SELECT reservation_id, status FROM reservation")).all())
        held = [order for order, (_, rid) in orders.items() if status[rid] == "active"]
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            paid = list(pool.map(lambda order: client.post(f"/orders/{order}/pay"), held * 2))
        assert {(r.status_code, r.json()["status"]) for r in paid} == {(200, "paid")}

    expected |= {f"commit:{orders[order][1]}" for order in held}
    wait_for(lambda: ledger_keys(engine) >= expected, 30, "every commit applied", interval_s=0.2)
    ledger = ledger_keys(engine)
    restock = {key for key in ledger if key.startswith("restock:")}
    assert len(restock) == 1
    assert set(ledger) - restock == expected  # nothing rolled back was ever applied
    # Each committed event was applied (or rejected by a rule) once; each retried request's copy was a duplicate.
    totals = zip(partition_totals(engine), totals_before, strict=True)
    applied, duplicates, rejected = (after - before for after, before in totals)
    assert (applied + rejected, duplicates) == (len(expected), len(retries))

    with engine.connect() as conn:
        reservations = {
            rid: (qty, st)
            for rid, qty, st in conn.execute(text("SELECT reservation_id, quantity, status FROM reservation"))
        }
        stock = conn.execute(
            text("SELECT available, reserved, sold, total_received FROM product_stock WHERE product_id = :p"),
            {"p": PRODUCT},
        ).one()
        counts = dict(conn.execute(text("SELECT article_id, like_count FROM article_like_count")).all())
        rows = dict(conn.execute(text("SELECT article_id, count(*) FROM article_like GROUP BY article_id")).all())
    # Orders: exactly the committed checkouts, each with its reservation; the declined ones left nothing anywhere.
    assert set(reservations) == {rid for _, rid in orders.values()}
    shop_orders = _shop_orders()
    assert {rid for rid, _ in shop_orders.values()} == set(reservations)
    assert {oid for oid, (_, st) in shop_orders.items() if st == "paid"} == set(held)
    # Stock balances, and every held unit belongs to a paid order.
    sold = sum(orders[order][0] for order in held)
    assert tuple(stock) == (STOCK - sold, 0, sold, STOCK)
    assert sum(qty for qty, st in reservations.values() if st in ("active", "committed")) == sold
    assert sold <= STOCK
    assert any(st == "rejected" for _, st in reservations.values())
    # Likes: each count equals its rows and the distinct users who liked (retries and repeats changed nothing).
    likers = {article: {user for a, user, _ in likes if a == article} for article in ARTICLES}
    assert counts == rows == {article: len(users) for article, users in likers.items()}
    wait_for(lambda: _outbox_size() == 0, 20, "the relay to forget every applied row")


def _shop_orders() -> dict[int, tuple[str, str]]:
    from seqproc.models.db import make_engine

    shop = make_engine(SHOP_DATABASE_URL)
    try:
        with shop.connect() as conn:
            rows = conn.execute(text("SELECT id, reservation_id, status FROM shop_order"))
            return {oid: (rid, st) for oid, rid, st in rows}
    finally:
        shop.dispose()


def _outbox_size() -> int:
    from seqproc.models.db import make_engine

    shop = make_engine(SHOP_DATABASE_URL)
    try:
        with shop.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM seqproc_outbox")).scalar_one())
    finally:
        shop.dispose()


def test_a_database_that_is_down_gets_a_503_without_internals(clean: Settings, tmp_path: Path) -> None:
    """Both databases on a port where nothing listens: the views answer 503 with a short message, not Django's
    500, and nothing of the URL or psycopg's text reaches the client; the log has the details."""
    closed = free_port()
    down = f"postgresql://shop:{SECRET}@127.0.0.1:{closed}/shop"
    env = example_env(clean, SHOP_DATABASE_URL=down, SEQPROC_DATABASE_URL=down)
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "shop_project.wsgi:application", "--bind", f"127.0.0.1:{port}"],
            cwd=EXAMPLE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def answer() -> httpx.Response | None:
                if server.poll() is not None:
                    raise AssertionError(f"gunicorn exited with {server.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    return httpx.get(f"{url}/articles/1", timeout=10)
                except httpx.HTTPError:
                    return None

            read = wait_for(answer, 30, "gunicorn to answer", interval_s=0.2)
            like = httpx.post(f"{url}/articles/1/like", json={"user_id": 7}, timeout=10)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(20)
    for response in (read, like):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        assert response.json() == {"error": "a service is unavailable; nothing was stored, try again later"}
    logged = log_path.read_text()
    assert "GET /articles/1: service unavailable" in logged
    assert f"port {closed} failed" in logged
    assert SECRET not in logged
