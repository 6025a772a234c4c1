"""The admin: seqproc's tables to look at (nothing to add, change or delete), and actions on dead letters and parked
keys, the same as ``seqproc deadletter``'s commands (:mod:`seqproc.worker.ops.deadletters` holds their rules):

- **Replay** (parked keys, and the dead letters of one): sends the control event through the key's partition queue;
  the partition's worker applies the key's dead letters in order, exactly once, then unparks it. A key that is not
  parked is refused with a message (retry its dead letters by id).
- **Retry** (dead letters): sends a letter's event again through its partition, validated and routed with this
  process's settings, under its own idempotency key (applied once), and marks the letter retried. Refused, the
  letter left open, when its event still cannot be sent or its key is parked (replay the key).
- **Discard** (dead letters): closes a letter with the reason typed beside the action, the user and the time.

Each waits a few seconds for the outcomes and reports them; one that comes later is still applied. Replay and retry
need the permission ``seqproc.replay_deadletter``, discard ``seqproc.discard_deadletter``; each is recorded in the
admin's history of the row. Retry and discard write the ``dead_letter`` rows through ``SEQPROC_DATABASE_URL`` (the
worker's database, which the read-only models read too): Django's models of seqproc's tables refuse writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from seqproc.contrib.django.conf import APP_LABEL
from seqproc.contrib.django.models import (
    DISCARD_PERMISSION,
    REPLAY_PERMISSION,
    ArticleLike,
    ArticleLikeCount,
    DeadLetter,
    ParkedKey,
    ProductStock,
    ReadOnlyModel,
    Reservation,
)
from seqproc.models.db import make_engine
from seqproc.models.errors import OutcomeTimeout, OutcomeUnavailable, SeqprocError
from seqproc.producer.api import current_settings
from seqproc.producer.publish import publisher_for
from seqproc.producer.receipt import Receipt
from seqproc.worker.ops.deadletters import discard_dead_letter, replay_event, require_parked, retry_dead_letter

if TYPE_CHECKING:
    from django.contrib.admin.filters import _ListFilterChoices

#: How long the replay and retry actions wait for the outcomes before they report them as sent.
REPLAY_WAIT_S = 5.0


# ModelAdmin is generic in django-stubs only: ModelAdmin[Any] would fail at run time.
class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Lists and detail pages only: the worker is the one writer of these tables."""

    list_per_page = 50
    # No second COUNT(*) over the whole table under a filter: these tables grow large.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _has(request: HttpRequest, permission: str) -> bool:
    user: Any = getattr(request, "user", None)
    return user is not None and bool(user.has_perm(f"{APP_LABEL}.{permission}"))


def _engine() -> Any:
    """An engine on seqproc's database for one action (actions are rare: no pool kept between them)."""
    return make_engine(current_settings().database_url, pool_size=1)


class ReplayAdmin(ReadOnlyAdmin):
    """The replay action, for the rows of a model that names an entity (``entity_key``)."""

    actions = ["replay"]

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return _has(request, REPLAY_PERMISSION)

    @admin.action(description="Replay: apply the parked key's dead letters in order, once", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        rows = list(queryset)
        keys = sorted({row.entity_key for row in rows if row.entity_key})
        unreadable = sum(1 for row in rows if not row.entity_key)
        if unreadable:
            # A letter that names no entity belongs to no parked key: it is retried or discarded by itself.
            self.message_user(
                request, f"{unreadable} without a key: left as is (retry or discard them)", messages.WARNING
            )
        if not keys:
            return
        parked = []
        engine = _engine()
        try:
            with engine.connect() as conn:
                for key in keys:
                    try:
                        require_parked(conn, key)
                    except SeqprocError as error:
                        self.message_user(request, str(error), messages.WARNING)
                        continue
                    parked.append(key)
        finally:
            engine.dispose()
        if not parked:
            return
        try:
            # Routing a key needs no domain module: a key of a domain this process does not load replays as well.
            receipts = publisher_for(current_settings()).publish([replay_event(key) for key in parked])
        except SeqprocError as error:
            self.message_user(request, f"replay not sent: {error}", messages.ERROR)
            return
        reports = dict(zip(parked, _outcomes(receipts, REPLAY_WAIT_S), strict=True))
        for key, report in reports.items():
            self.message_user(request, f"{key}: {report}", messages.SUCCESS)
        for row in rows:
            if row.entity_key in reports:
                self.log_change(request, row, f"replay of {row.entity_key}: {reports[row.entity_key]}")


def _outcomes(receipts: list[Receipt], wait_s: float) -> list[str]:
    """One line per receipt: its outcome, or that it was sent and is still on its way, within one deadline."""
    deadline = time.monotonic() + wait_s
    lines = []
    for receipt in receipts:
        try:
            outcome = receipt.wait(timeout_s=max(0.0, deadline - time.monotonic()))
        except OutcomeTimeout:
            lines.append(f"sent to partition {receipt.partition}; no outcome within {wait_s:g} s (it is queued)")
            continue
        except OutcomeUnavailable as unreadable:  # sent all the same: not an error page
            lines.append(f"sent to partition {receipt.partition}; its outcome could not be read ({unreadable.setting})")
            continue
        reason = f" ({outcome.reason})" if outcome.reason else ""
        error = f": {outcome.error}" if outcome.error else ""
        lines.append(f"{outcome.status}{reason} on partition {receipt.partition}{error}")
    return lines


class DeadLetterActionForm(ActionForm):
    """The action bar of the dead letters' list, with the reason a discard keeps."""

    reason = forms.CharField(required=False, label="Reason (discard)", max_length=1000)


class StateFilter(admin.SimpleListFilter):
    """Open dead letters by default (what needs a human), as ``seqproc deadletter list``; the closed ones on demand."""

    title = "state"
    parameter_name = "state"
    DEFAULT = "open"
    CLOSED = {"replayed": "replayed_at", "retried": "retried_at", "discarded": "discarded_at"}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "open"), *((state, state) for state in self.CLOSED), ("all", "all")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        state = self.value() or self.DEFAULT
        if state == "open":
            return queryset.filter(**_OPEN)
        if state in self.CLOSED:
            # The column a state goes by is set, and none of those before it (as DeadLetter.state reads them).
            columns = list(self.CLOSED.values())
            column = self.CLOSED[state]
            earlier = Q(**{f"{c}__isnull": True for c in columns[: columns.index(column)]})
            return queryset.filter(earlier, **{f"{column}__isnull": False})
        return queryset

    def choices(self, changelist: Any) -> Iterator[_ListFilterChoices]:
        current = self.value() or self.DEFAULT
        for value, title in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": title,
            }


#: The filter of an open dead letter (DeadLetter.is_open()'s, in Django's terms).
_OPEN = {"replayed_at": None, "retried_at": None, "discarded_at": None}


@admin.register(DeadLetter)
class DeadLetterAdmin(ReplayAdmin):
    list_display = ["id", "state", "entity_key", "event_key", "short_error", "partition", "created_at"]
    list_filter = [StateFilter, "partition"]
    search_fields = ["entity_key", "event_key", "error"]
    ordering = ["-id"]
    actions = ["replay", "retry", "discard"]
    action_form = DeadLetterActionForm

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return _has(request, DISCARD_PERMISSION)

    @admin.display(description="error")
    def short_error(self, letter: DeadLetter) -> str:
        return letter.error if len(letter.error) <= 120 else letter.error[:119] + "…"

    @admin.display(description="state")
    def state(self, letter: DeadLetter) -> str:
        return letter.state

    @admin.action(description="Retry: send the dead letter again through its partition, once", permissions=["replay"])
    def retry(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        settings = current_settings()  # its domains loaded: the retry validates against them
        sent: list[tuple[DeadLetter, list[Receipt]]] = []
        engine = _engine()
        try:
            for letter in queryset.order_by("id"):
                try:
                    with engine.begin() as conn:
                        sent.append((letter, retry_dead_letter(conn, letter.pk, publisher_for(settings))))
                except SeqprocError as error:
                    self.message_user(request, str(error), messages.ERROR)
        finally:
            engine.dispose()
        reports = iter(_outcomes([receipt for _, receipts in sent for receipt in receipts], REPLAY_WAIT_S))
        for letter, receipts in sent:
            for receipt in receipts:
                report = f"{receipt.event_type} {receipt.idempotency_key!r}: {next(reports)}"
                self.message_user(request, f"dead letter {letter.pk} sent again as {report}", messages.SUCCESS)
                self.log_change(request, letter, f"retried as {report}")

    @admin.action(description="Discard: close the dead letter with the reason given", permissions=["discard"])
    def discard(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        reason = str(request.POST.get("reason", "")).strip()
        if not reason:
            self.message_user(request, "Discard needs a reason: type it in the Reason field", messages.ERROR)
            return
        user: Any = getattr(request, "user", None)
        by = user.get_username() if user is not None else None
        engine = _engine()
        try:
            for letter in queryset.order_by("id"):
                try:
                    with engine.begin() as conn:
                        discard_dead_letter(conn, letter.pk, reason=reason, by=by)
                except SeqprocError as error:
                    self.message_user(request, str(error), messages.ERROR)
                    continue
                self.message_user(request, f"dead letter {letter.pk} discarded: {reason}", messages.SUCCESS)
                self.log_change(request, letter, f"discarded: {reason}")
        finally:
            engine.dispose()


@admin.register(ParkedKey)
class ParkedKeyAdmin(ReplayAdmin):
    list_display = ["entity_key", "partition", "reason", "parked_at", "dead_letters"]
    search_fields = ["entity_key"]
    ordering = ["parked_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(waiting=_count(DeadLetter, "entity_key", **_OPEN))

    @admin.display(description="dead letters waiting", ordering="waiting")
    def dead_letters(self, key: Any) -> int:
        return int(key.waiting)


@admin.register(ArticleLikeCount)
class LikeCountAdmin(ReadOnlyAdmin):
    list_display = ["article_id", "like_count", "rows", "updated_at"]
    ordering = ["-updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The invariant in view: like_count beside the number of like rows.
        return super().get_queryset(request).annotate(like_rows=_count(ArticleLike, "article_id"))

    @admin.display(description="like rows", ordering="like_rows")
    def rows(self, count: Any) -> int:
        return int(count.like_rows)


@admin.register(ProductStock)
class ProductStockAdmin(ReadOnlyAdmin):
    list_display = ["product_id", "available", "reserved", "sold", "total_received", "updated_at"]
    ordering = ["product_id"]


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["reservation_id", "product_id", "quantity", "status", "created_at", "expires_at"]
    list_filter = ["status"]
    search_fields = ["reservation_id"]
    ordering = ["-created_at"]


def _count(model: type[ReadOnlyModel], column: str, **filters: Any) -> Coalesce:
    """The number of ``model`` rows whose ``column`` equals the listed row's, as a subquery (no foreign keys link
    seqproc's tables: each is keyed by its entity)."""
    counted = (
        model.objects.filter(**{column: OuterRef(column)}, **filters)
        .order_by()
        .values(column)
        .annotate(n=Count("*"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)
