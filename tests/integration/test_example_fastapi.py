"""The FastAPI example (``examples/fastapi_likes``) under a real uvicorn with two worker processes, hit by httpx; its
events applied by a real ``seqproc worker``, its outbox rows sent by a real ``seqproc relay``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from seqproc.models.settings import Settings
from seqproc.worker.ops.inspect import article_state, check_invariants
from tests.conftest import LoggedProcess, RelayProcess, WorkerProcess, free_port, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

SECRET = "s3cr3t-broker-password"

UVICORN_WORKERS = 2


class Uvicorn(LoggedProcess):
    """``uvicorn examples.fastapi_likes.app:app --workers 2`` on a free port, its output in a log file."""

    what = "uvicorn"

    def __init__(
        self, settings: Settings, log_dir: Path, workers: int = UVICORN_WORKERS, *, port: int | None = None
    ) -> None:
        self.workers = workers
        self.url = f"http://127.0.0.1:{port or free_port()}"
        port = self.url.rsplit(":", 1)[1]
        argv = ["uvicorn", "examples.fastapi_likes.app:app", "--host", "127.0.0.1", "--port", port]
        super().__init__([*argv, "--workers", str(workers)], settings, log_dir / "uvicorn.log")

    def wait_ready(self, timeout_s: float = 45) -> None:
        self.wait_until(
            lambda: self.log().count("Application startup complete") >= self.workers,
            timeout_s,
            "uvicorn's workers started",
        )

    def stop(self, timeout_s: float = 20) -> int:
        return super().stop(timeout_s)


@pytest.fixture
def fastapi_app(clean: Settings, engine: Engine, tmp_path: Path) -> Iterator[Uvicorn]:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS fastapi_comment"))  # the example creates it on startup
    server = Uvicorn(clean, tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def test_likes_and_comments_through_fastapi_are_applied_exactly_once(
    clean: Settings,
    engine: Engine,
    fastapi_app: Uvicorn,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    started = time.monotonic()
    start_worker(clean)
    start_relay(clean)

    async def traffic() -> dict[str, list[httpx.Response]]:
        # A connection per request: on a loaded machine a kept-alive connection can sit idle past uvicorn's
        # keep-alive time and be closed by it just as the next request goes out (ReadError); a POST is not retried.
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=fastapi_app.url, timeout=30, limits=limits) as client:
            # 200 at once: 180 users like article 1, 10 more each send their like twice with one request id (a
            # client's retry), and 20 users comment on article 2 (the comment and its like in one transaction).
            burst = await asyncio.gather(
                *(client.post("/articles/1/like", params={"user_id": user}) for user in range(1, 181)),
                *(
                    client.post("/articles/1/like", params={"user_id": user}, headers={"Idempotency-Key": f"r-{user}"})
                    for user in range(181, 191)
                    for _ in range(2)
                ),
            )
            comments = await asyncio.gather(
                *(client.post("/articles/2/comments", json={"user_id": u, "body": f"#{u}"}) for u in range(1, 21))
            )
            # Then 30 of the first users take their like back.
            unlikes = await asyncio.gather(
                *(client.delete("/articles/1/like", params={"user_id": user}) for user in range(1, 31))
            )
            # Refused: a comment the database rejects after its like was written (rolled back, like included), a
            # bad user id (before anything is written or sent).
            refused = await asyncio.gather(
                *(client.post("/articles/2/comments", json={"user_id": u, "body": ""}) for u in range(101, 106)),
                client.post("/articles/2/comments", json={"user_id": 0, "body": "hello"}),
                client.post("/articles/1/like", params={"user_id": 0}),
            )
            waited = [
                await client.post("/articles/3/like", params={"user_id": 1, "wait_s": 20}),
                await client.post("/articles/3/comments", params={"wait_s": 20}, json={"user_id": 2, "body": "ok"}),
            ]
            return {"burst": burst, "comments": comments, "unlikes": unlikes, "refused": refused, "waited": waited}

    responses = asyncio.run(asyncio.wait_for(traffic(), 60))
    assert {r.status_code for r in [*responses["burst"], *responses["unlikes"]]} == {202}
    assert {r.status_code for r in responses["comments"]} == {201}
    burst = [r.json() for r in responses["burst"]]
    assert len({b["event_id"] for b in burst}) == 200  # 200 events...
    assert len({b["idempotency_key"] for b in burst}) == 190  # ...of 190 keys: the retries share theirs
    assert {b["queue"] for b in burst} == {f"seqproc.p{burst[0]['partition']:02d}"}

    refused = responses["refused"]
    assert [r.status_code for r in refused] == [422] * 7
    assert refused[0].json()["detail"].startswith("body: must be 1 to 500 characters; nothing was stored")
    assert refused[5].json() == {"detail": "user_id: must be >= 1 (got 0)", "field": "user_id"}
    assert refused[6].json()["field"] == "user_id"

    # Waiting inside the app: for the direct like, and for the outbox's once its transaction committed.
    assert responses["waited"][0].json()["outcome"] == {"status": "applied"}
    assert responses["waited"][1].json()["like"]["outcome"] == {"status": "applied"}

    def counts() -> tuple[int, int]:
        with httpx.Client(base_url=fastapi_app.url, timeout=10) as client:
            return client.get("/articles/1").json()["like_count"], client.get("/articles/2").json()["like_count"]

    wait_for(lambda: counts() == (160, 20), 30, "190 likes less 30 unlikes, and 20 comment likes, applied")
    time.sleep(0.5)  # anything doubled would land now
    assert counts() == (160, 20)
    with engine.connect() as conn:
        assert article_state(conn, 1) == {"article_id": 1, "like_count": 160, "likes": 160, "consistent": True}
        assert article_state(conn, 2)["likes"] == 20
        assert check_invariants(conn).ok
    assert scalar(engine, "SELECT count(*) FROM idempotency_ledger WHERE key LIKE 'like:r-%'") == 10
    # The refused comments stored nothing and enqueued nothing.
    assert scalar(engine, "SELECT count(*) FROM fastapi_comment WHERE article_id = 2") == 20
    assert scalar(engine, "SELECT count(*) FROM fastapi_comment WHERE user_id > 100 OR user_id < 1") == 0
    assert scalar(engine, "SELECT count(*) FROM article_like WHERE article_id = 2 AND user_id > 100") == 0
    wait_for(lambda: scalar(engine, "SELECT count(*) FROM seqproc_outbox") == 0, 15, "the outbox emptied")
    assert time.monotonic() - started < 60


def test_a_broker_that_refuses_connections_gets_a_quick_503_without_internals(
    clean: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Nothing listens on the broker's port: the like answers 503 within about a second (not after the publish
    timeout), with a short message; the broker's URL and redis-py's text go to the log only."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS fastapi_comment"))
    closed = free_port()
    broker = f"redis://:{SECRET}@127.0.0.1:{closed}/0"
    server = Uvicorn(clean.model_copy(update={"broker_url": broker}), tmp_path, workers=1)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            started = time.monotonic()
            response = client.post("/articles/1/like", params={"user_id": 7})
            elapsed = time.monotonic() - started
            assert client.get("/articles/1").json() == {"article_id": 1, "like_count": 0}  # the app itself is fine
    finally:
        server.stop()  # one process, no supervisor: uvicorn ends by its SIGTERM
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"detail": "the event was not sent: the message broker is unavailable; try again later"}
    assert elapsed < 3.0  # SEQPROC_PUBLISH_REFUSED_RETRY_S (1 s), not SEQPROC_PUBLISH_TIMEOUT_S
    log = server.log()
    assert f"SEQPROC_BROKER_URL=redis://:***@127.0.0.1:{closed}/0" in log  # the details, for the operator
    assert "Error 111 connecting to" in log  # redis-py's own words
    assert SECRET not in log
