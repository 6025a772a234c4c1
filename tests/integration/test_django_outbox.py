"""``seqproc.contrib.django.outbox`` outside a transaction: refused, as the other outbox writers refuse an
autocommit connection. Django set up as in ``test_django_contrib`` (its fixtures)."""

from __future__ import annotations

import pytest

from seqproc.producer.outbox import OutboxConnectionError
from tests.integration.django_example import SHOP_DATABASE_URL
from tests.integration.test_django_contrib import django_project, outbox_keys, shop  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.services, pytest.mark.timeout(90), pytest.mark.usefixtures("shop")]

pytest.importorskip("django")


def test_outside_atomic_the_django_outbox_refuses_and_inside_it_writes() -> None:
    from django.db import transaction

    from seqproc.contrib.django import outbox

    with pytest.raises(OutboxConnectionError, match=r"^using='default': must be inside transaction.atomic"):
        outbox.like(11, 1)
    with pytest.raises(OutboxConnectionError, match=r"^using='seqproc': must be inside"):
        outbox.send_many([{"type": "like", "article_id": 11, "user_id": 2}], using="seqproc")
    assert outbox.write([]) == []
    assert outbox_keys(SHOP_DATABASE_URL) == []
    with transaction.atomic():
        liked = outbox.like(11, 3)
    assert outbox_keys(SHOP_DATABASE_URL) == [f"like:{liked.idempotency_key}"]
