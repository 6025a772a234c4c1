"""The example page (``examples/page/index.html``) in Django: send, preview, notify, as the FastAPI example serves
it, with Django views. The events go straight to the broker (``seqproc.like``): a preview sees them at once, where
an outbox event shows once the relay has sent it (milliseconds later). The page polls the user's notifications by
cursor: a stream would hold one of gunicorn's synchronous workers for as long as the page is open.

- ``GET /page?user=7&article=42&product=7``: the page; ``GET /page/state``: the previews;
- ``POST /page/like``, ``/page/unlike``, ``/page/reserve``: send with ``notify="user:<id>"``, answer with the preview;
- ``GET /page/notifications?after=<cursor>``: what the user's topic holds after the cursor.

No login and no CSRF token: the user id comes in the query string (an example of the pattern, not of
authentication).
"""

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import seqproc
from seqproc.contrib.django import preview_article, preview_product

PAGE = (Path(__file__).resolve().parents[2] / "page" / "index.html").read_text(encoding="utf-8")
#: The alias of seqproc's database (its tables are read there).
SEQPROC = "seqproc"


def _ids(request: HttpRequest) -> tuple[int, int, int] | JsonResponse:
    refused = JsonResponse({"error": "user, article and product: positive integers"}, status=400)
    try:
        user, article, product = (int(request.GET.get(name, "")) for name in ("user", "article", "product"))
    except ValueError:
        return refused
    return refused if min(user, article, product) < 1 else (user, article, product)


def _article(article: int, user: int) -> dict[str, Any]:
    shown = preview_article(article, user_id=user, using=SEQPROC)
    return {"like_count": shown.like_count, "liked": shown.liked, "pending": len(shown.pending)}


def _product(product: int) -> tuple[dict[str, Any], seqproc.ProductPreview]:
    shown = preview_product(product, using=SEQPROC)
    state = {"available": shown.available, "reserved": shown.reserved, "sold": shown.sold}
    return {**state, "pending": len(shown.pending)}, shown


@require_GET
def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.replace("__STREAM__", "poll"))


@require_GET
def state(request: HttpRequest) -> JsonResponse:
    ids = _ids(request)
    if isinstance(ids, JsonResponse):
        return ids
    user, article, product = ids
    return JsonResponse({"article": _article(article, user), "product": _product(product)[0]})


@csrf_exempt
@require_POST
def like(request: HttpRequest) -> JsonResponse:
    return _toggle(request, seqproc.like)


@csrf_exempt
@require_POST
def unlike(request: HttpRequest) -> JsonResponse:
    return _toggle(request, seqproc.unlike)


def _toggle(request: HttpRequest, send: Any) -> JsonResponse:
    ids = _ids(request)
    if isinstance(ids, JsonResponse):
        return ids
    user, article, _ = ids
    key = request.headers.get("Idempotency-Key")
    send(article, user, idempotency_key=key, notify=f"user:{user}", notify_on="rejected")
    return JsonResponse({"article": _article(article, user)})


@csrf_exempt
@require_POST
def reserve(request: HttpRequest) -> JsonResponse:
    ids = _ids(request)
    if isinstance(ids, JsonResponse):
        return ids
    user, _, product = ids
    # The request id names the reservation: a retried click is the same reservation, not a second one.
    reservation_id = f"page-{user}-{request.headers.get('Idempotency-Key') or uuid.uuid4().hex}"
    receipt = seqproc.reserve(product, 1, reservation_id=reservation_id, notify=f"user:{user}", notify_on="rejected")
    shown, full = _product(product)
    mine = [p.outcome.status for p in full.pending if p.event.id == receipt.event_id]
    # Not pending any more: a worker settled it already, and its outcome is published.
    predicted = mine[0] if mine else receipt.wait(timeout_s=5).effective.status
    return JsonResponse({"reservation_id": reservation_id, "product": shown, "predicted": predicted})


@require_GET
def notifications(request: HttpRequest) -> JsonResponse:
    ids = _ids(request)
    if isinstance(ids, JsonResponse):
        return ids
    found = seqproc.notifications(f"user:{ids[0]}", after=request.GET.get("after") or None, timeout_s=0)
    return JsonResponse([asdict(note) for note in found], safe=False)
