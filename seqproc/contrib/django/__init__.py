"""seqproc in a Django project: add ``"seqproc.contrib.django"`` to ``INSTALLED_APPS``.

    from django.db import transaction
    from seqproc.contrib.django import outbox

    with transaction.atomic():
        order = Order.objects.create(...)
        outbox.reserve(order.product_id, order.quantity, reservation_id=order.reservation_id)

- :mod:`.outbox`: the outbox calls, written through Django's connection inside the current ``atomic`` block;
- :mod:`.previews`: ``preview(key, using=...)``, ``preview_article``, ``preview_product`` through Django's connection;
- :mod:`.conf`: seqproc's settings from the ``SEQPROC`` dict of Django's settings over the ``SEQPROC_*`` environment;
- :mod:`.models`: read-only, unmanaged models of seqproc's tables (``seqproc migrate`` owns the schema);
- :mod:`.admin`: dead letters and parked keys with a replay action, like counts, stock and reservations;
- :mod:`.routers`: :class:`~.routers.SeqprocRouter`, for seqproc's tables in a database of their own.

Importing this package imports no model, so ``outbox`` may be imported from anywhere, before the app registry is
ready.
"""

from seqproc.contrib.django import outbox
from seqproc.contrib.django.previews import preview, preview_article, preview_product

__all__ = ["outbox", "preview", "preview_article", "preview_product"]
