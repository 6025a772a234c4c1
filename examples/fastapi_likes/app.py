"""seqproc from a FastAPI application: likes enqueued with ``seqproc.aio``, and a comment stored together with a like
in one transaction through ``seqproc.aio.outbox``.

    uvicorn examples.fastapi_likes.app:app --workers 2      # from the repository root; see README.md beside this

Endpoints:

- ``POST /articles/{id}/like?user_id=7`` and ``DELETE /articles/{id}/like?user_id=7``: 202 with the receipt (where
  the event went) once the broker holds the event. An ``Idempotency-Key`` header makes a client's retry a
  duplicate; ``?wait_s=5`` also waits for the outcome.
- ``GET /articles/{id}``: the like count, read from seqproc's table (read-only: only seqproc's worker writes it).
- ``GET /page?user=7``: a page with a like button and a "reserve" button that shows each click at once from the
  preview the response carries, and the worker's rejections as they come (server-sent events): ``page.py``.
- ``POST /articles/{id}/comments`` with ``{"user_id": 7, "body": "..."}``: the application's own row in
  ``fastapi_comment`` and a like, in one transaction: both or neither. A body the database refuses (its CHECK: 1 to
  500 characters) rolls the like back too: nothing is enqueued.

A bad id answers 422 naming the field (seqproc's ``InvalidEvent``). A service that cannot be reached (the broker,
within about a second when it refuses the connection; the database) answers 503 with a short message and a
``Retry-After``: the details (which setting, which URL, the driver's error) go to the log, not to the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

import seqproc
import seqproc.aio
from examples.fastapi_likes.page import router as page_router
from seqproc.models.settings import get_settings
from seqproc.models.tables.likes import ArticleLikeCount

logger = logging.getLogger(__name__)

#: The application's own table, in the database that holds seqproc's outbox table (one transaction writes both).
CREATE_COMMENT_TABLE = """
CREATE TABLE IF NOT EXISTS fastapi_comment (
    id bigserial PRIMARY KEY,
    article_id bigint NOT NULL,
    user_id bigint NOT NULL,
    body text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 500),
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_COMMENT = (
    "INSERT INTO fastapi_comment (article_id, user_id, body) VALUES (:article_id, :user_id, :body) RETURNING id"
)

WaitSeconds = Annotated[float, Query(ge=0, le=30, description="also wait this long for the outcome")]
IdempotencyKey = Annotated[str | None, Header(description="a request id: a retry with it is a duplicate")]


class Comment(BaseModel):
    user_id: int
    body: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()  # SEQPROC_* from the environment, as every seqproc process reads them
    # seqproc's tables (read here, never written), and the application's database, where seqproc's outbox table
    # lives (SEQPROC_OUTBOX_DATABASE_URL, or seqproc's own database when unset).
    seqproc_db = create_async_engine(settings.database_url, pool_pre_ping=True)
    app_db = seqproc_db if settings.outbox_url == settings.database_url else create_async_engine(settings.outbox_url)
    async with app_db.begin() as conn:
        # Workers start together, and concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's
        # catalog: they take turns.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('fastapi_comment'))"))
        await conn.execute(text(CREATE_COMMENT_TABLE))
    app.state.seqproc_db = seqproc_db
    app.state.sessions = async_sessionmaker(app_db, expire_on_commit=False)
    yield
    await seqproc.aio.aclose()  # optional: the server's loop shutdown would close them as well
    for engine in {seqproc_db, app_db}:
        await engine.dispose()


app = FastAPI(title="seqproc likes (FastAPI example)", lifespan=lifespan)
app.include_router(page_router)  # the example page: send, preview, notify (page.py)


@app.exception_handler(seqproc.InvalidEvent)
async def invalid_event(request: Request, error: seqproc.InvalidEvent) -> JSONResponse:
    # Raised before anything was sent or written: ``error.field`` names the culprit.
    return JSONResponse({"detail": str(error), "field": error.field}, status_code=422)


@app.exception_handler(seqproc.PublishError)
async def broker_unreachable(request: Request, error: seqproc.PublishError) -> JSONResponse:
    # The message names the broker's URL and the driver's error: for the log, not for the client.
    logger.warning("%s %s: %s", request.method, request.url.path, error)
    detail = "the event was not sent: the message broker is unavailable; try again later"
    if error.maybe_sent:
        detail = "the message broker did not answer: the event may have been sent; retry with the same Idempotency-Key"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})


@app.exception_handler(OperationalError)
@app.exception_handler(InterfaceError)
async def database_unreachable(request: Request, error: Exception) -> JSONResponse:
    logger.warning("%s %s: database unavailable: %s", request.method, request.url.path, error)
    detail = "the database is unavailable; nothing was stored, try again later"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})


async def accepted(receipt: seqproc.Receipt, wait_s: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "idempotency_key": receipt.idempotency_key,
        "event_id": receipt.event_id,
        "partition": receipt.partition,
        "queue": receipt.queue,
    }
    if wait_s:
        try:
            body["outcome"] = (await seqproc.aio.wait(receipt, timeout_s=wait_s)).to_wire()
        except seqproc.OutcomeTimeout:
            body["outcome"] = None  # the event was sent; its outcome did not come in time: the 202 stands
        except seqproc.OutcomeUnavailable as error:
            logger.warning("outcome of %s unreadable: %s", receipt.idempotency_key, error)
            body["outcome"] = None  # sent all the same: the 202 stands (a 503 would invite a second event)
    return body


@app.post("/articles/{article_id}/like", status_code=202)
async def like(
    article_id: int, user_id: int, idempotency_key: IdempotencyKey = None, wait_s: WaitSeconds = 0
) -> dict[str, Any]:
    receipt = await seqproc.aio.like(article_id, user_id, idempotency_key=idempotency_key)
    return await accepted(receipt, wait_s)


@app.delete("/articles/{article_id}/like", status_code=202)
async def unlike(
    article_id: int, user_id: int, idempotency_key: IdempotencyKey = None, wait_s: WaitSeconds = 0
) -> dict[str, Any]:
    receipt = await seqproc.aio.unlike(article_id, user_id, idempotency_key=idempotency_key)
    return await accepted(receipt, wait_s)


@app.get("/articles/{article_id}")
async def article(article_id: int, request: Request) -> dict[str, Any]:
    engine: AsyncEngine = request.app.state.seqproc_db
    async with engine.connect() as conn:
        query = select(ArticleLikeCount.like_count).where(ArticleLikeCount.article_id == article_id)
        count = (await conn.execute(query)).scalar_one_or_none()
    return {"article_id": article_id, "like_count": count or 0}


@app.post("/articles/{article_id}/comments", status_code=201, response_model=None)
async def comment(
    article_id: int, comment: Comment, request: Request, wait_s: WaitSeconds = 0
) -> dict[str, Any] | JSONResponse:
    try:
        async with request.app.state.sessions() as session, session.begin():
            # Validated first (a bad user_id raises InvalidEvent: 422, rolled back), then written in the session's
            # transaction; seqproc relay sends it once, and only if, the transaction commits.
            receipt = await seqproc.aio.outbox.like(session, article_id, comment.user_id)
            values = {"article_id": article_id, "user_id": comment.user_id, "body": comment.body}
            comment_id = (await session.execute(text(INSERT_COMMENT), values)).scalar_one()
    except IntegrityError:
        # The comment broke its CHECK after the like was written: the transaction rolled back, the like with it.
        return JSONResponse(
            {"detail": "body: must be 1 to 500 characters; nothing was stored and nothing enqueued"}, status_code=422
        )
    return {"comment_id": comment_id, "like": await accepted(receipt, wait_s)}
