"""The example page (``examples/page/index.html``) and what it calls: send, preview, notify.

- ``GET /page?user=7&article=42&product=7``: the page;
- ``GET /page/state``: the article's and the product's previews (a reload shows what the user did, applied or not);
- ``POST /page/like``, ``/page/unlike``, ``/page/reserve``: send the event with ``notify="user:<id>"``, answer
  with the preview that includes it (so the page updates at once, before any worker applied it);
- ``GET /page/events``: the user's notifications as server-sent events (``seqproc.aio.notifications``): a
  reservation the worker rejects after the page said "reserved" shows "sold out: your reservation was released".

No login: the user id comes in the query string (an example of the pattern, not of authentication).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncEngine

import seqproc
import seqproc.aio

router = APIRouter(prefix="/page")

PAGE = (Path(__file__).resolve().parents[1] / "page" / "index.html").read_text(encoding="utf-8")

User = Annotated[int, Query(ge=1, alias="user")]
ArticleId = Annotated[int, Query(ge=1, alias="article")]
ProductId = Annotated[int, Query(ge=1, alias="product")]
RequestId = Annotated[str | None, Header(alias="Idempotency-Key")]


def topic(user: int) -> str:
    """Each user's notifications go to their own topic."""
    return f"user:{user}"


@router.get("", response_class=HTMLResponse)
async def page() -> str:
    return PAGE.replace("__STREAM__", "sse")


async def article_state(request: Request, article: int, user: int) -> dict[str, Any]:
    engine: AsyncEngine = request.app.state.seqproc_db
    async with engine.connect() as conn:
        shown = await seqproc.aio.preview_article(conn, article, user_id=user)
    return {"like_count": shown.like_count, "liked": shown.liked, "pending": len(shown.pending)}


async def product_state(request: Request, product: int) -> tuple[dict[str, Any], seqproc.ProductPreview]:
    engine: AsyncEngine = request.app.state.seqproc_db
    async with engine.connect() as conn:
        shown = await seqproc.aio.preview_product(conn, product)
    state = {
        "available": shown.available,
        "reserved": shown.reserved,
        "sold": shown.sold,
        "pending": len(shown.pending),
    }
    return state, shown


@router.get("/state")
async def state(request: Request, user: User, article: ArticleId, product: ProductId) -> dict[str, Any]:
    return {
        "article": await article_state(request, article, user),
        "product": (await product_state(request, product))[0],
    }


@router.post("/like")
async def like(request: Request, user: User, article: ArticleId, request_id: RequestId = None) -> dict[str, Any]:
    await seqproc.aio.like(article, user, idempotency_key=request_id, notify=topic(user), notify_on="rejected")
    return {"article": await article_state(request, article, user)}


@router.post("/unlike")
async def unlike(request: Request, user: User, article: ArticleId, request_id: RequestId = None) -> dict[str, Any]:
    await seqproc.aio.unlike(article, user, idempotency_key=request_id, notify=topic(user), notify_on="rejected")
    return {"article": await article_state(request, article, user)}


@router.post("/reserve")
async def reserve(request: Request, user: User, product: ProductId, request_id: RequestId = None) -> dict[str, Any]:
    # The request id names the reservation: a retried click is the same reservation, not a second one.
    reservation_id = f"page-{user}-{request_id or uuid.uuid4().hex}"
    receipt = await seqproc.aio.reserve(
        product, 1, reservation_id=reservation_id, notify=topic(user), notify_on="rejected"
    )
    shown, full = await product_state(request, product)
    mine = [p.outcome.status for p in full.pending if p.event.id == receipt.event_id]
    # Not pending any more: a worker settled it already, and its outcome is published.
    predicted = mine[0] if mine else (await seqproc.aio.wait(receipt, timeout_s=5)).effective.status
    return {"reservation_id": reservation_id, "product": shown, "predicted": predicted}


@router.get("/events")
async def events(user: User, last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    async def stream() -> AsyncIterator[str]:
        # From the oldest notification kept (the page lists them), or after the last one the browser saw when it
        # reconnects (EventSource sends its id back).
        async for note in seqproc.aio.notifications(topic(user), after=last_event_id or None):
            yield f"id: {note.cursor}\ndata: {json.dumps(asdict(note))}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
