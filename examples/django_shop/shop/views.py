"""The shop's views: each writes its events through seqproc's outbox inside the same ``transaction.atomic`` block
as its own rows, so an event is sent if and only if the view's transaction commits.

JSON in, JSON out, no CSRF and no login: an example of the writes, not of an API's authentication.
"""

import json
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from seqproc import InvalidEvent, Receipt
from seqproc.contrib.django import outbox
from seqproc.contrib.django.models import ArticleLike, ArticleLikeCount, Reservation
from shop.models import Order

#: The card number the payment step declines (think of a real payment provider saying no).
DECLINED_CARD = "4000-0000-0000-0002"


#: The largest id or quantity a request may carry (the order's integer columns); seqproc's own limits are checked by
#: the outbox call (a quantity above 1,000,000 is refused there, inside the transaction, and rolls the order back).
MAX_INT = 2**31 - 1


class PaymentDeclined(Exception):
    pass


class BadRequest(Exception):
    pass


@csrf_exempt
@require_POST
def like(request: HttpRequest, article_id: int) -> JsonResponse:
    """``{"user_id": 7}``; an ``Idempotency-Key`` header makes a retried request a duplicate, applied once."""
    try:
        user_id = _positive_int(_body(request), "user_id")
        with transaction.atomic():
            # The view's own writes would go here, in the same transaction.
            receipt = outbox.like(article_id, user_id, idempotency_key=request.headers.get("Idempotency-Key"))
    except (BadRequest, InvalidEvent) as error:
        return JsonResponse({"error": str(error)}, status=400)
    return JsonResponse(_sent(receipt), status=202)


@require_GET
def article(request: HttpRequest, article_id: int) -> JsonResponse:
    """The count seqproc keeps, beside its rows (equal once the worker caught up: the count is never ahead)."""
    count = ArticleLikeCount.objects.filter(article_id=article_id).values_list("like_count", flat=True).first()
    likes = ArticleLike.objects.filter(article_id=article_id).count()
    return JsonResponse({"article_id": article_id, "like_count": count or 0, "likes": likes})


@csrf_exempt
@require_POST
def checkout(request: HttpRequest) -> JsonResponse:
    """``{"product_id": 1, "quantity": 2, "customer": "ada", "card": "..."}``: the order and its reservation event
    commit together; a declined card (or a bad quantity) rolls both back, and nothing is sent."""
    try:
        data = _body(request)
        with transaction.atomic():
            order = Order.objects.create(
                product_id=_positive_int(data, "product_id"),
                quantity=_positive_int(data, "quantity"),
                customer=str(data.get("customer", ""))[:100],
            )
            receipt = outbox.reserve(order.product_id, order.quantity, reservation_id=order.reservation_id)
            _charge(order, str(data.get("card", "")))
    except (BadRequest, InvalidEvent) as error:
        return JsonResponse({"error": str(error)}, status=400)
    except PaymentDeclined as error:
        return JsonResponse({"error": str(error)}, status=402)
    return JsonResponse({"order_id": order.pk, "reservation_id": order.reservation_id, **_sent(receipt)}, status=201)


@csrf_exempt
@require_POST
def pay(request: HttpRequest, order_id: int) -> JsonResponse:
    """Mark the order paid and write its commit event, together. seqproc wants a commit only after its reservation
    was applied: the view reads the reservation (seqproc's table) first and answers 409 until it is held."""
    with transaction.atomic():
        order = get_object_or_404(Order.objects.select_for_update(), pk=order_id)
        if order.status == Order.Status.PAID:
            return JsonResponse({"order_id": order.pk, "status": order.status})  # a retried payment: done already
        if order.status == Order.Status.FAILED:
            return JsonResponse({"order_id": order.pk, "status": order.status}, status=409)
        reservation = Reservation.objects.filter(reservation_id=order.reservation_id).first()
        if reservation is None:
            return JsonResponse({"error": "the reservation is not applied yet; retry"}, status=409)
        if reservation.status != "active":
            order.status = Order.Status.FAILED
            order.save(update_fields=["status"])
            return JsonResponse({"order_id": order.pk, "status": order.status}, status=409)
        order.status = Order.Status.PAID
        order.save(update_fields=["status"])
        receipt = outbox.commit(order.product_id, order.reservation_id)
    return JsonResponse({"order_id": order.pk, "status": order.status, **_sent(receipt)})


@require_GET
def order(request: HttpRequest, order_id: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=order_id)
    reservation = Reservation.objects.filter(reservation_id=order.reservation_id).first()
    return JsonResponse(
        {
            "order_id": order.pk,
            "status": order.status,
            "reservation_id": order.reservation_id,
            "reservation": reservation.status if reservation else None,
        }
    )


def _charge(order: Order, card: str) -> None:
    if card == DECLINED_CARD:
        raise PaymentDeclined(f"card declined for order {order.pk}: the order and its reservation are rolled back")


def _sent(receipt: Receipt) -> dict[str, Any]:
    return {"idempotency_key": receipt.idempotency_key, "event_id": receipt.event_id, "partition": receipt.partition}


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _positive_int(data: dict[str, Any], field: str) -> int:
    value = data.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_INT:
        raise BadRequest(f"{field}: must be an integer from 1 to {MAX_INT} (got {value!r})")
    return value
