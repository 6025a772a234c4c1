"""Read-only Django models of seqproc's tables: like counts and likes, stock and reservations, dead letters and
parked keys.

They are unmanaged (``managed = False``) and the app has no Django migrations: Alembic (``seqproc migrate``) is the
one owner of these tables, and Django's ``migrate`` creates nothing of them. They refuse every write, through an
instance or a queryset (:class:`ReadOnlyError`): a row written around the worker would break its invariants (a
like count that no longer equals its rows) and its ordering. Change the data by sending events; replay a parked
key, retry or discard a dead letter from the admin or with ``seqproc deadletter``.

Their columns follow ``seqproc.models.tables`` (a test compares them). With seqproc's tables in another database
than ``default``, set ``SEQPROC["DJANGO_DATABASE"]`` and add :class:`~seqproc.contrib.django.routers.SeqprocRouter`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeAlias, TypeVar

import django
from django.db import models

from seqproc.models.errors import SeqprocError
from seqproc.models.fields import LEDGER_KEY_LENGTH, MAX_KEY_LENGTH, ReservationStatus
from seqproc.models.tables.ledger import DISCARDED_BY_LENGTH, dead_letter_state

__all__ = [
    "ArticleLike",
    "ArticleLikeCount",
    "DeadLetter",
    "ParkedKey",
    "ProductStock",
    "ReadOnlyError",
    "Reservation",
]

_M = TypeVar("_M", bound=models.Model)

if TYPE_CHECKING:
    # django-stubs infers a field's types through its mypy plugin, which needs a settings module when mypy runs;
    # seqproc has none, so each field says what it holds (annotations only: never evaluated at run time).
    _BigInt: TypeAlias = models.BigIntegerField[int, int]
    _Int: TypeAlias = models.IntegerField[int, int]
    _MaybeInt: TypeAlias = models.IntegerField[int | None, int | None]
    _Str: TypeAlias = models.CharField[str, str]
    _MaybeStr: TypeAlias = models.CharField[str | None, str | None]
    _Text: TypeAlias = models.TextField[str, str]
    _MaybeText: TypeAlias = models.TextField[str | None, str | None]
    _When: TypeAlias = models.DateTimeField[datetime, datetime]
    _MaybeWhen: TypeAlias = models.DateTimeField[datetime | None, datetime | None]

#: The admin's replay and retry actions require this permission (superusers hold every permission).
REPLAY_PERMISSION = "replay_deadletter"
#: The admin's discard action requires this one.
DISCARD_PERMISSION = "discard_deadletter"


class ReadOnlyError(SeqprocError):
    """A write through one of seqproc's models: its tables are written by seqproc's worker only."""


def _refuse(model: type[models.Model]) -> NoReturn:
    raise ReadOnlyError(
        f"{model.__name__} is read-only: seqproc's worker alone writes {model._meta.db_table}; send an event "
        "instead (seqproc.contrib.django.outbox), or act on dead letters (admin, seqproc deadletter)"
    )


class ReadOnlyQuerySet(models.QuerySet[_M]):
    """Reads as usual; every bulk write raises :class:`ReadOnlyError`."""

    def create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model)

    def get_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model)

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model)

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model)

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model)

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model)


class ReadOnlyManager(models.Manager[_M]):
    def get_queryset(self) -> ReadOnlyQuerySet[_M]:
        return ReadOnlyQuerySet(self.model, using=self._db)


class ReadOnlyModel(models.Model):
    """An unmanaged model of one of seqproc's tables; ``save`` and ``delete`` raise :class:`ReadOnlyError`."""

    objects: ClassVar[ReadOnlyManager[Any]] = ReadOnlyManager()

    class Meta:
        abstract = True
        managed = False
        # View only: no add, change or delete permissions to grant by mistake.
        default_permissions = ("view",)

    def save(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self))

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self))


class ArticleLikeCount(ReadOnlyModel):
    """An article's like count; it equals the number of its :class:`ArticleLike` rows after every commit."""

    article_id: _BigInt = models.BigIntegerField(primary_key=True)
    like_count: _BigInt = models.BigIntegerField()
    updated_at: _When = models.DateTimeField()

    class Meta(ReadOnlyModel.Meta):
        db_table = "article_like_count"
        verbose_name = "like count"

    def __str__(self) -> str:
        return f"article {self.article_id}: {self.like_count} likes"


class ArticleLike(ReadOnlyModel):
    """One row per user who currently likes an article (primary key ``(article_id, user_id)``).

    Django 5.2 maps the pair as a ``CompositePrimaryKey``. Older Django wants one primary-key column: there
    ``article_id`` is declared the primary key only so that the model can exist. It is not unique, so on Django < 5.2
    query this model with filters, counts and ``values()``, never by ``pk`` (``get(pk=...)``, instance equality and
    the admin would mistake two likes of an article for one). The admin does not list this model either way.
    """

    if django.VERSION >= (5, 2):
        pk = models.CompositePrimaryKey("article_id", "user_id")
    article_id: _BigInt = models.BigIntegerField(primary_key=django.VERSION < (5, 2))
    user_id: _BigInt = models.BigIntegerField()
    #: The producer's ordering stamp of the like (nanoseconds).
    stamp: _BigInt = models.BigIntegerField()
    liked_at: _When = models.DateTimeField()

    class Meta(ReadOnlyModel.Meta):
        db_table = "article_like"
        verbose_name = "like"

    def __str__(self) -> str:
        return f"user {self.user_id} likes article {self.article_id}"


class ProductStock(ReadOnlyModel):
    """A product's quantities: ``available + reserved + sold == total_received``, ``available >= 0``."""

    product_id: _BigInt = models.BigIntegerField(primary_key=True)
    available: _BigInt = models.BigIntegerField()
    reserved: _BigInt = models.BigIntegerField()
    sold: _BigInt = models.BigIntegerField()
    total_received: _BigInt = models.BigIntegerField()
    updated_at: _When = models.DateTimeField()

    class Meta(ReadOnlyModel.Meta):
        db_table = "product_stock"
        verbose_name = "stock"
        verbose_name_plural = "stock"

    def __str__(self) -> str:
        return f"product {self.product_id}: {self.available} available"


class Reservation(ReadOnlyModel):
    """A reservation, keyed by the caller's reservation id (``quantity`` is 0 for a cancellation that came first)."""

    reservation_id: _Str = models.CharField(max_length=MAX_KEY_LENGTH, primary_key=True)
    product_id: _BigInt = models.BigIntegerField(db_index=True)
    quantity: _BigInt = models.BigIntegerField()
    status: _Str = models.CharField(max_length=16, choices=[(s.value, s.value) for s in ReservationStatus])
    created_at: _When = models.DateTimeField()
    updated_at: _When = models.DateTimeField()
    #: When the expiry job releases it if still active (None: never).
    expires_at: _MaybeWhen = models.DateTimeField(null=True)

    class Meta(ReadOnlyModel.Meta):
        db_table = "reservation"

    def __str__(self) -> str:
        return f"{self.reservation_id}: {self.quantity} of product {self.product_id}, {self.status}"


class DeadLetter(ReadOnlyModel):
    """A message or event that could not be applied, with its raw body and error; open until replayed, retried or
    discarded (:attr:`state`), and kept after."""

    id: _BigInt = models.BigIntegerField(primary_key=True)
    partition: _MaybeInt = models.IntegerField(null=True)
    queue: _MaybeStr = models.CharField(max_length=64, null=True)
    event_key: _MaybeStr = models.CharField(max_length=LEDGER_KEY_LENGTH, null=True)
    #: ``article:42`` or ``product:7``: what a replay goes by (None for a message that could not be read).
    entity_key: _MaybeStr = models.CharField(max_length=64, null=True)
    content_type: _MaybeStr = models.CharField(max_length=128, null=True)
    body: _Text = models.TextField()
    error: _Text = models.TextField()
    created_at: _When = models.DateTimeField()
    replayed_at: _MaybeWhen = models.DateTimeField(null=True)
    retried_at: _MaybeWhen = models.DateTimeField(null=True)
    #: The idempotency key(s) it was sent again with.
    retried_as: _MaybeText = models.TextField(null=True)
    discarded_at: _MaybeWhen = models.DateTimeField(null=True)
    discarded_by: _MaybeStr = models.CharField(max_length=DISCARDED_BY_LENGTH, null=True)
    discard_reason: _MaybeText = models.TextField(null=True)

    class Meta(ReadOnlyModel.Meta):
        db_table = "dead_letter"
        verbose_name = "dead letter"
        permissions = [
            (REPLAY_PERMISSION, "Can replay parked keys and retry dead letters"),
            (DISCARD_PERMISSION, "Can discard dead letters"),
        ]

    @property
    def state(self) -> str:
        """``open``, or how it was closed: ``replayed``, ``retried``, ``discarded``."""
        return dead_letter_state(
            replayed_at=self.replayed_at, retried_at=self.retried_at, discarded_at=self.discarded_at
        )

    def __str__(self) -> str:
        return f"dead letter {self.id} ({self.entity_key or 'unreadable message'})"


class ParkedKey(ReadOnlyModel):
    """An entity whose events wait in the dead-letter store, in order, until it is replayed."""

    entity_key: _Str = models.CharField(max_length=64, primary_key=True)
    partition: _Int = models.IntegerField()
    reason: _Text = models.TextField()
    parked_at: _When = models.DateTimeField()

    class Meta(ReadOnlyModel.Meta):
        db_table = "parked_key"
        verbose_name = "parked key"

    def __str__(self) -> str:
        return self.entity_key
