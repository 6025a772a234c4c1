"""Previews from an event loop: ``await seqproc.aio.preview(conn, "article:42")`` with an ``AsyncConnection`` or
``AsyncSession``; the same reads as :mod:`seqproc.producer.previews` (the domain's ``load`` runs through the
connection's ``run_sync``; the pending index is read in a worker thread)."""

from __future__ import annotations

import asyncio
from typing import Any

from seqproc.models.wire import article_key, product_key
from seqproc.producer.previews import (
    LOADS,
    ArticlePreview,
    Preview,
    ProductPreview,
    article_preview,
    domain_of,
    pending_index,
    predict,
    product_preview,
)


async def preview(conn: Any, key: str) -> Preview:
    """:func:`seqproc.preview`, awaited."""
    domain, value = domain_of(key)
    raw = await asyncio.to_thread(pending_index, key)
    result: Preview = await conn.run_sync(lambda sync: predict(sync, domain, key, value, raw))
    return result


async def preview_article(conn: Any, article_id: int, user_id: int | None = None) -> ArticlePreview:
    """:func:`seqproc.preview_article`, awaited."""
    for attempt in range(1, LOADS + 1):
        found = await preview(conn, article_key(article_id))
        shown: ArticlePreview
        shown, moved = await conn.run_sync(lambda sync, f=found: article_preview(sync, f, article_id, user_id))
        if not moved or attempt == LOADS:
            break
    return shown


async def preview_product(conn: Any, product_id: int) -> ProductPreview:
    """:func:`seqproc.preview_product`, awaited."""
    return product_preview(await preview(conn, product_key(product_id)), product_id)
