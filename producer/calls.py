"""The calls application code makes, written once: ``like``, ``unlike``, ``restock``, ``reserve``, ``release``,
``commit``, ``send`` and ``send_many``.

Each is a method of :class:`Calls`: it validates what the caller gives (:class:`InvalidEvent` naming the field;
nothing is sent then), makes the wire event (keyed and stamped, :mod:`seqproc.producer.build`) and hands it to the
``Calls``' :class:`Sender`. Only the sender differs from one way of sending to another, as procrastinate's
connectors do: the broker (``seqproc.like``), the outbox through the caller's connection (``seqproc.outbox.like``),
through a Django alias (``seqproc.contrib.django.outbox.like``), and the asyncio forms of the first two
(``seqproc.aio``, ``seqproc.aio.outbox``). Each front module exports functions made of these methods
(:mod:`seqproc.producer.fronts`), so their parameters, defaults, types and docstrings are the ones written here.

What a front adds is its sender's: a keyword-only option (``timeout_s`` for the broker, ``using`` for Django: the
keys of :class:`SendOptions`, typed per front, ``Never`` where a front takes none), or the connection, first.

Every call takes ``notify="user:42"`` (a topic of the caller's choosing, named like an entity key): after the commit
that applies, rejects or dead-letters the event, the worker publishes its outcome there (``seqproc.notifications``);
``notify_on="rejected"`` publishes only rejections and dead letters. Both travel in the event itself, so every front
has them for nothing.

A new event type of a built-in domain needs its schema and its rules only: ``send``, ``send_many`` and ``seqproc
enqueue`` take it in every front. A named call for it (as ``like`` is) is one method here; each front module then
exports it by name (one line), which ``tests/unit/test_fronts.py`` checks against :data:`CALLS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Generic, Protocol, TypedDict, TypeVar, Unpack

from seqproc.models.domain import EventModel
from seqproc.models.events import Event
from seqproc.models.fields import NotifyOn
from seqproc.producer.build import build_events, make_event, notice, prepare

#: The type of the ``timeout_s`` option in a front (``float | None`` for the broker's, ``Never`` elsewhere).
T = TypeVar("T")
#: The type of the ``using`` option (``str`` for Django's front, ``Never`` elsewhere).
U = TypeVar("U")
#: What a call of one event returns: a :class:`Receipt`, or a coroutine of one.
One = TypeVar("One", covariant=True)
#: What ``send_many`` returns: a list of receipts, or a coroutine of one.
Many = TypeVar("Many", covariant=True)


class SendOptions(TypedDict, Generic[T, U], total=False):
    """The keyword-only options a front adds to every call, passed through to its sender."""

    #: The broker's: how long a call may try to reach it (default ``SEQPROC_PUBLISH_TIMEOUT_S``).
    timeout_s: T
    #: Django's: the database alias whose current transaction the event is written in.
    using: U


class Sender(Protocol[T, U, One, Many]):
    """What varies between the ways of sending: where built events go, and what the caller gets back."""

    def one(self, event: Event, options: SendOptions[T, U]) -> One:
        """Send one event (validated, keyed, stamped)."""
        ...

    def many(self, events: list[Event], options: SendOptions[T, U]) -> Many:
        """Send many events at once, maybe none (then return no receipt, and contact nothing)."""
        ...


class Calls(Generic[T, U, One, Many]):
    """The calls, over one sender."""

    __slots__ = ("sender",)

    def __init__(self, sender: Sender[T, U, One, Many]) -> None:
        self.sender = sender

    def like(
        self,
        article_id: int,
        user_id: int,
        *,
        idempotency_key: str | None = None,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> One:
        """``user_id`` likes ``article_id`` (a repeated like changes nothing)."""
        fields = {"article_id": article_id, "user_id": user_id}
        return self.sender.one(
            make_event("like", fields, idempotency_key=idempotency_key, notify=notify, notify_on=notify_on), options
        )

    def unlike(
        self,
        article_id: int,
        user_id: int,
        *,
        idempotency_key: str | None = None,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> One:
        """``user_id`` takes back their like of ``article_id`` (an unlike without a like changes nothing)."""
        fields = {"article_id": article_id, "user_id": user_id}
        return self.sender.one(
            make_event("unlike", fields, idempotency_key=idempotency_key, notify=notify, notify_on=notify_on), options
        )

    def restock(
        self,
        product_id: int,
        quantity: int,
        *,
        idempotency_key: str | None = None,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> One:
        """Add ``quantity`` units of ``product_id`` (creating the product on its first restock)."""
        fields = {"product_id": product_id, "quantity": quantity}
        return self.sender.one(
            make_event("restock", fields, idempotency_key=idempotency_key, notify=notify, notify_on=notify_on), options
        )

    def reserve(
        self,
        product_id: int,
        quantity: int,
        *,
        reservation_id: str,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> One:
        """Hold ``quantity`` units of ``product_id``; rejected with ``insufficient_stock`` if fewer are available."""
        fields = {"product_id": product_id, "quantity": quantity, "reservation_id": reservation_id}
        return self.sender.one(make_event("reserve", fields, notify=notify, notify_on=notify_on), options)

    def release(
        self,
        product_id: int,
        reservation_id: str,
        *,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> One:
        """Give a reservation's units back (once). A release that arrives before its reservation cancels it."""
        fields = {"product_id": product_id, "reservation_id": reservation_id}
        return self.sender.one(make_event("release", fields, notify=notify, notify_on=notify_on), options)

    def commit(
        self,
        product_id: int,
        reservation_id: str,
        *,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> One:
        """Turn an applied reservation into a sale. Rejected for an unknown or released reservation."""
        fields = {"product_id": product_id, "reservation_id": reservation_id}
        return self.sender.one(make_event("commit", fields, notify=notify, notify_on=notify_on), options)

    def send(
        self,
        event: EventModel,
        *,
        idempotency_key: str | None = None,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> One:
        """An event of any domain (``send(Deposit(account_id=7, amount=100), idempotency_key="req-1")``).

        Without ``idempotency_key`` every call is a new event; a caller that may retry passes its own (a request
        id), and the retry is then a ``duplicate``. Events whose key follows from their fields (a reservation, a
        transfer) take no key."""
        return self.sender.one(
            prepare([event], idempotency_keys=[idempotency_key], notified=notice(notify, notify_on))[0], options
        )

    def send_many(
        self,
        events: Iterable[Mapping[str, Any] | EventModel],
        *,
        notify: str | None = None,
        notify_on: NotifyOn | None = None,
        **options: Unpack[SendOptions[T, U]],
    ) -> Many:
        """Many events at once: with few messages (one per partition, and per ``max_events_per_message``), or in
        one insert into the outbox.

        Each item is an event (``Deposit(...)``) or a mapping with ``type`` and that type's fields, as the single
        calls take them, e.g. ``{"type": "like", "article_id": 1, "user_id": 2}``. All are validated before any is
        sent or written; the first bad one raises :class:`InvalidEvent` naming its index and field
        (``events[3].quantity: ...``). Order is kept per partition, hence per entity."""
        return self.sender.many(build_events(events, notified=notice(notify, notify_on)), options)


#: The calls every front exports, in the order they are defined: the one list the fronts' names are checked against.
CALLS: tuple[str, ...] = tuple(name for name in vars(Calls) if not name.startswith("_") and name != "sender")
