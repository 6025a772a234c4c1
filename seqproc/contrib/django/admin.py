"""The admin: seqproc's tables to look at (nothing to add, change or delete), and a replay action on dead letters and
parked keys.

Replay sends the same control event as ``seqproc deadletter replay KEY``, through the key's partition queue: the
partition's worker applies the key's dead letters in order, exactly once, then unparks it. The action waits a few
seconds for the outcome and reports it; one that comes later is still applied. It needs the permission
``seqproc.replay_deadletter`` and is recorded in the admin's history of the row.
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from seqproc.contrib.django.conf import APP_LABEL
from seqproc.contrib.django.models import (
    REPLAY_PERMISSION,
    ArticleLike,
    ArticleLikeCount,
    DeadLetter,
    ParkedKey,
    ProductStock,
    ReadOnlyModel,
    Reservation,
)
from seqproc.models.errors import OutcomeTimeout, OutcomeUnavailable, PublishError
from seqproc.producer.api import current_settings
from seqproc.producer.publish import publisher_for
from seqproc.producer.receipt import Receipt
from seqproc.worker.ops.deadletters import replay_event

#: How long the replay action waits for the outcomes before it reports them as sent.
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


class ReplayAdmin(ReadOnlyAdmin):
    """The replay action, for the rows of a model that names an entity (``entity_key``)."""

    actions = ["replay"]

    def has_replay_permission(self, request: HttpRequest) -> bool:
        user: Any = getattr(request, "user", None)
        return user is not None and bool(user.has_perm(f"{APP_LABEL}.{REPLAY_PERMISSION}"))

    @admin.action(description="Replay: apply the key's dead letters in order, once", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        rows = list(queryset)
        keys = sorted({row.entity_key for row in rows if row.entity_key})
        unreadable = sum(1 for row in rows if not row.entity_key)
        if unreadable:
            # A message that could not be decoded names no entity: there is nothing to apply it to.
            self.message_user(request, f"{unreadable} unreadable (no key): left as is", messages.WARNING)
        if not keys:
            return
        try:
            receipts = publisher_for(current_settings()).publish([replay_event(key) for key in keys])
        except PublishError as error:
            self.message_user(request, f"replay not sent: {error}", messages.ERROR)
            return
        reports = dict(zip(keys, _outcomes(receipts, REPLAY_WAIT_S), strict=True))
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
        except OutcomeUnavailable as error:  # sent all the same: not an error page
            lines.append(f"sent to partition {receipt.partition}; its outcome could not be read ({error.setting})")
            continue
        reason = f" ({outcome.reason})" if outcome.reason else ""
        lines.append(f"{outcome.status}{reason} on partition {receipt.partition}")
    return lines


@admin.register(DeadLetter)
class DeadLetterAdmin(ReplayAdmin):
    list_display = ["id", "entity_key", "event_key", "short_error", "partition", "created_at", "replayed_at"]
    list_filter = [("replayed_at", admin.EmptyFieldListFilter), "partition"]
    search_fields = ["entity_key", "event_key", "error"]
    ordering = ["-id"]

    @admin.display(description="error")
    def short_error(self, letter: DeadLetter) -> str:
        return letter.error if len(letter.error) <= 120 else letter.error[:119] + "…"


@admin.register(ParkedKey)
class ParkedKeyAdmin(ReplayAdmin):
    list_display = ["entity_key", "partition", "reason", "parked_at", "dead_letters"]
    search_fields = ["entity_key"]
    ordering = ["parked_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(waiting=_count(DeadLetter, "entity_key", replayed_at=None))

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
