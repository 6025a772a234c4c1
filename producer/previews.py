"""Previews: what a key will be once the events sent for it are applied, read before the worker applies them.

    preview = seqproc.preview(conn, "wallet:7")       # Preview(state, pending)
    seqproc.preview_article(conn, 42, user_id=7)      # like_count, liked: the user's like counted at once
    seqproc.preview_product(conn, 7)                  # available, reserved, sold: pending reservations counted

A preview is the key's applied state, loaded with its domain's own ``load`` through the caller's connection
(read-only: nothing is saved), with the key's pending events (sent, not acknowledged by a worker yet: the pending
index, :mod:`seqproc.models.pending`) applied in memory with the domain's own ``apply``, in order. So the rules are
written once, and a user domain gets previews for nothing. Its cost does not depend on the queue: one ``HGETALL``
of the key's pending index, one ``load``, and, when something is pending, a lookup of the pending events'
idempotency keys in the ledger before and after the load: an event committed but not acknowledged yet is in the
state already, and is not applied twice; one committed while the state was read is found by the second lookup, and
the state read again. A second event under one key is a duplicate, as the worker will find.

What a preview cannot know: events sent by other processes after its read (it is as old as its read: milliseconds),
events written to the outbox and not relayed yet (the relay sends within ``SEQPROC_RELAY_INTERVAL_MS``), and the
order in which the worker will interleave events pushed by several producers at the same instant (each push's order
is kept). Once the queue drains, a preview is the applied state exactly: it keeps no counter of its own.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from pydantic import TypeAdapter, ValidationError

from seqproc.models.clients import broker_client
from seqproc.models.domain import Applied, Domain, EventModel, domains
from seqproc.models.errors import InvalidEvent
from seqproc.models.fields import EntityKey
from seqproc.models.outcomes import Outcome
from seqproc.models.pending import index_of, pending_events
from seqproc.models.wire import article_key, is_redis_url, product_key
from seqproc.producer.api import current_settings

__all__ = [
    "ArticlePreview",
    "Predicted",
    "Preview",
    "ProductPreview",
    "preview",
    "preview_article",
    "preview_product",
]


@dataclass(frozen=True, slots=True)
class Predicted:
    """A pending event and the outcome it is predicted to get (``applied``, ``rejected`` with its reason, or
    ``duplicate`` for a second event under one idempotency key)."""

    event: EventModel
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Preview:
    """``state``: the domain's state of the key (what its ``load`` returns) with the pending events applied;
    ``pending``: those events, in order, each with its predicted outcome."""

    state: Any
    pending: list[Predicted]


@dataclass(frozen=True, slots=True)
class ArticlePreview:
    #: Applied likes plus the pending ones (less the pending unlikes).
    like_count: int
    #: The user's latest action, pending included (None without a ``user_id``).
    liked: bool | None
    pending: list[Predicted]


@dataclass(frozen=True, slots=True)
class ProductPreview:
    #: Units on hand, less pending reservations that fit.
    available: int
    #: Units held by active reservations, pending ones included.
    reserved: int
    sold: int
    pending: list[Predicted]


def preview(conn: Any, key: str) -> Preview:
    """The preview of the entity ``key`` (``"article:42"``, ``"product:7"``, ``"wallet:7"``): its applied state
    loaded through ``conn`` (a SQLAlchemy connection or session, or what the domain's ``load`` takes) with its
    pending events applied in memory. :class:`InvalidEvent` for a key no domain owns."""
    domain, value = domain_of(key)
    return predict(conn, domain, key, value, pending_index(key))


def preview_article(conn: Any, article_id: int, user_id: int | None = None) -> ArticlePreview:
    """``like_count`` (applied plus pending) and ``liked`` (``user_id``'s latest action, pending included)."""
    for attempt in range(1, LOADS + 1):
        shown, moved = article_preview(conn, preview(conn, article_key(article_id)), article_id, user_id)
        if not moved or attempt == LOADS:
            break
    return shown


def preview_product(conn: Any, product_id: int) -> ProductPreview:
    """``available``, ``reserved``, ``sold`` with the pending reservations, releases and commits counted."""
    return product_preview(preview(conn, product_key(product_id)), product_id)


# -- the parts the asyncio and Django fronts share ---------------------------------------------------------------
#: Most loads of one preview when workers keep committing its pending events as it reads.
LOADS = 3


def predict(conn: Any, domain: Domain, key: str, value: Any, raw: Mapping[Any, Any]) -> Preview:
    """The preview of ``key`` (``value``: its key field's value) from its pending index as read (``raw``)."""
    conn = _connection_of(conn)
    events = pending_events(dict(raw), key)
    keys = [event.ledger_key for event in events]
    applied = _in_ledger(conn, keys) if events else set()
    for attempt in range(1, LOADS + 1):
        state = domain.load_states(conn, [value], events)[value]
        if not events or attempt == LOADS:
            break  # (the last load goes with the ledger read before it: what committed since is counted again)
        # A pending event committed while the state was read may or may not be in it: read the ledger again and,
        # if it moved, the state too (a commit writes both at once), so that nothing counts twice or not at all.
        after = _in_ledger(conn, keys)
        if after == applied:
            break
        applied = after
    seen: set[str] = set()
    pending = []
    for event in events:
        ledger_key = event.ledger_key
        if ledger_key in applied:  # committed, not acknowledged yet: in the state already
            continue
        if ledger_key in seen:
            pending.append(Predicted(event, Outcome("duplicate")))
            continue
        seen.add(ledger_key)
        decision = domain.apply_event(state, event)
        told = Outcome("applied" if isinstance(decision, Applied) else "rejected", decision.reason)
        pending.append(Predicted(event, told))
    return Preview(state, pending)


def article_preview(conn: Any, found: Preview, article_id: int, user_id: int | None) -> tuple[ArticlePreview, bool]:
    """The article's preview from ``found`` and its applied count, and whether it moved: a pending event of
    ``found`` committed before the count was read (the count holds it, and so does the pending delta: the caller
    previews again, as :func:`predict` loads again)."""
    # Imported here: a producer's import loads no table and no SQLAlchemy (models/__init__.py).
    from sqlalchemy import select

    from seqproc.models.tables.likes import ArticleLike, ArticleLikeCount

    conn = _connection_of(conn)
    book = found.state  # seqproc.domains.likes.ArticleLikes: the pairs the pending events touch
    count = conn.execute(
        select(ArticleLikeCount.like_count).where(ArticleLikeCount.article_id == article_id)
    ).scalar_one_or_none()
    delta = 0
    for pair, after in book.pairs.items():
        before = book.initial.get(pair)
        if after is not None:
            delta += int(after.liked) - int(bool(before is not None and before.liked))
    liked: bool | None = None
    if user_id is not None:
        mine = book.pairs.get((article_id, user_id))
        if mine is not None:
            liked = mine.liked
        else:
            row = conn.execute(
                select(ArticleLike.user_id).where(ArticleLike.article_id == article_id, ArticleLike.user_id == user_id)
            ).first()
            liked = row is not None
    # The count is read after the state, outside predict's ledger checks: a worker's commit in between counted the
    # like twice (in the count and as pending). Read the ledger once more, after the count.
    waiting = [p.event.ledger_key for p in found.pending if p.outcome.status != "duplicate"]
    moved = bool(waiting) and bool(_in_ledger(conn, waiting))
    return ArticlePreview(int(count or 0) + delta, liked, found.pending), moved


def product_preview(found: Preview, product_id: int) -> ProductPreview:
    product = found.state.state.products.get(product_id)  # seqproc.domains.stock.ProductBook
    if product is None:
        return ProductPreview(0, 0, 0, found.pending)
    return ProductPreview(product.available, product.reserved, product.sold, found.pending)


_ENTITY_KEY: TypeAdapter[str] = TypeAdapter(EntityKey)


def domain_of(key: str) -> tuple[Domain, Any]:
    """The domain that owns entity ``key`` and the value of its key field (``"article:42"`` -> likes, 42)."""
    try:
        _ENTITY_KEY.validate_python(key)
    except ValidationError:
        raise InvalidEvent("key", f"must be <entity>:<key>, as article:42 (got {key!r:.80})") from None
    entity, _, text_value = key.partition(":")
    for domain in domains():
        if domain.entity != entity or not domain.events:
            continue
        model = next(iter(domain.events.values()))
        field = model.model_fields[domain.key]
        try:
            typed: Any = Annotated[field.annotation, *field.metadata]  # the field's type with its constraints
            return domain, TypeAdapter(typed).validate_strings(text_value)
        except ValidationError:
            raise InvalidEvent("key", f"{text_value!r:.80} is not a valid {domain.key} of {entity}") from None
    known = ", ".join(sorted({d.entity for d in domains() if d.events and d.entity != "seqproc"}))
    raise InvalidEvent("key", f"no domain owns {entity!r} (known: {known})")


def _connection_of(conn: Any) -> Any:
    """A session's connection (the built-in domains read through a SQLAlchemy connection)."""
    from sqlalchemy.orm import Session

    return conn.connection() if isinstance(conn, Session) else conn


@functools.cache
def _ledger_statement() -> Any:
    from sqlalchemy import bindparam, text

    return text("SELECT key FROM idempotency_ledger WHERE key IN :keys").bindparams(bindparam("keys", expanding=True))


def _in_ledger(conn: Any, keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` the ledger holds (their events are applied: in the state already)."""
    if hasattr(conn, "dialect"):  # SQLAlchemy
        return {row[0] for row in conn.execute(_ledger_statement(), {"keys": list(keys)})}
    cursor = conn.cursor()  # a DB-API connection (psycopg)
    try:
        cursor.execute("SELECT key FROM idempotency_ledger WHERE key = ANY(%s)", (list(keys),))
        return {row[0] for row in cursor.fetchall()}
    finally:
        cursor.close()


_CLIENTS: dict[str, redis.Redis] = {}
_CLIENTS_LOCK = threading.Lock()


def pending_index(key: str) -> dict[Any, Any]:
    """``key``'s pending index, from the broker of the current settings (none on another broker)."""
    settings = current_settings()
    url = settings.broker_url
    if not is_redis_url(url):
        return {}
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(url)
        if client is None:
            client = _CLIENTS[url] = broker_client(settings)
    return client.hgetall(index_of(key, settings.partitions))
