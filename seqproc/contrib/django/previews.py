"""Previews in a Django view: ``preview("article:42", using="default")``, ``preview_article(42, user_id=7)``,
``preview_product(7)``: :mod:`seqproc.producer.previews` through the connection Django uses for ``using`` in this
thread (inside the current ``atomic`` block, if any: the preview reads, and never commits or rolls back).

The domains' ``load`` functions read through SQLAlchemy: the preview lends them Django's own database connection
(PostgreSQL, psycopg 3), with commit, rollback and close made no-ops, so that SQLAlchemy's bookkeeping cannot end
the view's transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, connections

from seqproc import producer
from seqproc.producer.previews import ArticlePreview, Preview, ProductPreview

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = ["preview", "preview_article", "preview_product"]


def preview(key: str, *, using: str = DEFAULT_DB_ALIAS) -> Preview:
    """:func:`seqproc.preview` through the Django connection of ``using``."""
    with _borrowed(using) as conn:
        return producer.preview(conn, key)


def preview_article(article_id: int, user_id: int | None = None, *, using: str = DEFAULT_DB_ALIAS) -> ArticlePreview:
    """:func:`seqproc.preview_article` through the Django connection of ``using``."""
    with _borrowed(using) as conn:
        return producer.preview_article(conn, article_id, user_id)


def preview_product(product_id: int, *, using: str = DEFAULT_DB_ALIAS) -> ProductPreview:
    """:func:`seqproc.preview_product` through the Django connection of ``using``."""
    with _borrowed(using) as conn:
        return producer.preview_product(conn, product_id)


class _Lent:
    """Django's DB-API connection as SQLAlchemy sees it: everything but ending the transaction or the connection."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


@contextmanager
def _borrowed(using: str) -> Iterator[Connection]:
    from sqlalchemy import create_engine  # here: importing seqproc's Django app loads no SQLAlchemy
    from sqlalchemy.pool import NullPool

    wrapper = connections[using]
    wrapper.ensure_connection()
    with _ENGINES_LOCK:
        engine = _ENGINES.get(using)
        if engine is None:
            # One engine per alias (its dialect initialised once); each connect lends this thread's connection.
            engine = _ENGINES[using] = create_engine(
                "postgresql+psycopg://",
                creator=lambda: _Lent(connections[using].connection),
                poolclass=NullPool,
                use_native_hstore=False,  # its on-connect type lookup wants psycopg's own class
            )
    with engine.connect() as conn:
        yield conn
