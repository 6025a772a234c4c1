"""``seqproc.contrib.django.outbox`` outside a transaction: refused, as the other outbox writers refuse an
autocommit connection. Django set up as in ``test_django_contrib`` (its fixtures)."""

from __future__ import annotations

import pytest

from seqproc import producer
from seqproc.models.db import make_engine
from seqproc.models.errors import PartitionCountMismatch
from seqproc.models.settings import Settings
from seqproc.producer.outbox import OutboxConnectionError
from seqproc.worker.outbox_identity import record_outbox_partition_count
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


def test_the_django_outbox_with_another_partition_count_writes_nothing(clean: Settings) -> None:
    """The insert checks the count the outbox's database records (here the shop's), as every outbox writer does."""
    from django.db import transaction

    from seqproc.contrib.django import outbox

    shop_engine = make_engine(SHOP_DATABASE_URL)
    try:
        record_outbox_partition_count(shop_engine, clean.partitions)  # as `seqproc migrate` copies it there
    finally:
        shop_engine.dispose()
    producer.configure(clean.model_copy(update={"partitions": 8}))
    try:
        with transaction.atomic():
            with pytest.raises(PartitionCountMismatch, match=r"SEQPROC_PARTITIONS is 8 but .* 16 partitions"):
                outbox.send_many([{"type": "like", "article_id": 12, "user_id": u} for u in (1, 2)])
            with pytest.raises(PartitionCountMismatch):
                outbox.like(12, 3)
    finally:
        producer.configure(clean)
    assert outbox_keys(SHOP_DATABASE_URL) == []
    with transaction.atomic():
        liked = outbox.like(12, 4)
    assert outbox_keys(SHOP_DATABASE_URL) == [f"like:{liked.idempotency_key}"]


def test_the_django_preview_reads_through_the_alias_and_leaves_its_transaction_alone() -> None:
    """Pending events (no worker runs here) counted through Django's connection of ``using``; inside ``atomic``,
    the block's own writes stay (the preview neither commits nor rolls back)."""
    from django.db import connections, transaction

    import seqproc
    from seqproc.contrib.django import preview, preview_article, preview_product

    seqproc.like(21, 1)
    seqproc.restock(22, 2)
    seqproc.reserve(22, 1, reservation_id="dj-1")
    assert (
        preview_article(21, user_id=1, using="seqproc").like_count,
        preview("article:21", using="seqproc").pending[0].event.type,
    ) == (1, "like")
    with transaction.atomic(using="seqproc"):
        with connections["seqproc"].cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE preview_probe (n int)")
        shown = preview_product(22, using="seqproc")
        assert (shown.available, shown.reserved) == (1, 1)
        assert preview_article(21, user_id=2, using="seqproc").liked is False
        with connections["seqproc"].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM preview_probe")  # still in the same transaction: the table is there
            assert cursor.fetchone() == (0,)


def test_the_django_outbox_carries_notify_in_the_event() -> None:
    """``notify=`` on a Django outbox call travels in the event's body, for the worker to publish to after the relay
    sent it (the relay and the worker read the body as it is: tests/integration/test_notifications.py)."""
    import json

    from django.db import transaction
    from sqlalchemy import text

    from seqproc.contrib.django import outbox

    with transaction.atomic():
        outbox.reserve(31, 1, reservation_id="dj-n", notify="user:31", notify_on="rejected")
    engine = make_engine(SHOP_DATABASE_URL)
    try:
        with engine.connect() as conn:
            [body] = conn.execute(text("SELECT body FROM seqproc_outbox")).scalars()
    finally:
        engine.dispose()
    assert (json.loads(body)["notify"], json.loads(body)["notify_on"]) == ("user:31", "rejected")
