"""``seqproc.contrib.django`` in the example project, through Django's test client, on the real PostgreSQL and Redis
with a real ``seqproc worker`` and ``seqproc relay``.

Django is set up once, in this process, with the example's settings (``examples/django_shop``): its own database is
``<test database>_django``, seqproc's tables are read through its ``seqproc`` alias (the test database).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.tables import ArticleLike as ArticleLikeTable
from seqproc.models.tables import (
    ArticleLikeCount as ArticleLikeCountTable,
)
from seqproc.models.tables import DeadLetter as DeadLetterTable
from seqproc.models.tables import ParkedKey as ParkedKeyTable
from seqproc.models.tables import ProductStock as ProductStockTable
from seqproc.models.tables import Reservation as ReservationTable
from seqproc.models.tables.base import table_of
from tests.conftest import RelayProcess, WorkerProcess, wait_for
from tests.integration.django_example import (
    EXAMPLE_DIR,
    SHOP_DATABASE_URL,
    database_url,
    drop_database,
    example_env,
    manage,
    prepare_shop_database,
    recreate_database,
    reset_shop_database,
    table_names,
)

pytestmark = [pytest.mark.services, pytest.mark.timeout(90)]

django = pytest.importorskip("django")

POISONED = 6_660  # product whose restock of 150 breaks a test constraint: its key gets parked


@pytest.fixture(scope="module")
def django_project(service_settings: Settings) -> Iterator[str]:
    """Django set up with the example's settings, as ``manage.py`` would (environment restored afterwards)."""
    from django.apps import apps

    prepare_shop_database(service_settings)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in example_env(service_settings).items():
            if os.environ.get(name) != value:
                patch.setenv(name, value)
        patch.syspath_prepend(str(EXAMPLE_DIR))
        if not apps.ready:
            django.setup()
        from django.db import connections
        from django.test.utils import setup_test_environment, teardown_test_environment

        setup_test_environment()  # responses carry their template context and messages
        yield SHOP_DATABASE_URL
        teardown_test_environment()
        connections.close_all()
    producer.configure(None)


@pytest.fixture
def shop(django_project: str, clean: Settings) -> Settings:
    """A clean shop database (orders, outbox) besides conftest's clean seqproc database and Redis."""
    reset_shop_database()
    return clean


def relay_settings(settings: Settings) -> Settings:
    """The relay reads the outbox in the shop's database and the ledger in seqproc's."""
    return settings.model_copy(update={"outbox_database_url": SHOP_DATABASE_URL})


def outbox_keys(url: str) -> list[str]:
    from seqproc.models.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT ledger_key FROM seqproc_outbox ORDER BY id")).scalars())
    finally:
        engine.dispose()


def ledger_keys(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT key FROM idempotency_ledger")).scalars())


def test_events_commit_with_the_atomic_block_and_rolled_back_ones_are_never_written(
    shop: Settings,
    engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    from django.db import transaction

    from seqproc.contrib.django import outbox
    from seqproc.contrib.django.models import ArticleLike, ArticleLikeCount, ProductStock

    class ViewFailed(Exception):
        pass

    def view_that_fails(article_id: int, user_id: int, using: str = "default") -> None:
        with transaction.atomic(using=using):
            outbox.like(article_id, user_id, using=using)
            raise ViewFailed

    with pytest.raises(ViewFailed):
        view_that_fails(11, 1)
    assert outbox_keys(SHOP_DATABASE_URL) == []

    with transaction.atomic():
        liked = outbox.like(11, 2)
        try:
            with transaction.atomic():  # a savepoint rolled back takes its events with it
                outbox.like(11, 3)
                raise ViewFailed
        except ViewFailed:
            pass
        many = outbox.send_many(
            [{"type": "like", "article_id": 11, "user_id": 4}, {"type": "restock", "product_id": 5, "quantity": 10}]
        )
    committed = [f"{r.event_type}:{r.idempotency_key}" for r in [liked, *many]]  # the ledger's keys
    assert outbox_keys(SHOP_DATABASE_URL) == committed

    # using=: another alias's connection and transaction (the example's "seqproc" alias has an outbox table too).
    with pytest.raises(ViewFailed):
        view_that_fails(12, 1, using="seqproc")
    with transaction.atomic(using="seqproc"):
        elsewhere = outbox.like(12, 2, using="seqproc")
    assert outbox_keys(shop.database_url) == [f"like:{elsewhere.idempotency_key}"]
    assert outbox_keys(SHOP_DATABASE_URL) == committed

    start_relay(relay_settings(shop))
    start_worker(shop)
    assert [r.wait(30).status for r in [liked, *many]] == ["applied"] * 3
    assert ledger_keys(engine) == set(committed)  # the rolled-back likes of users 1 and 3: never sent
    # The read-only models read what the worker wrote (through the router, in seqproc's database).
    assert ArticleLikeCount.objects.get(article_id=11).like_count == 2
    assert set(ArticleLike.objects.filter(article_id=11).values_list("user_id", flat=True)) == {2, 4}
    stock = ProductStock.objects.get(product_id=5)
    assert (stock.available, stock.total_received) == (10, 10)
    assert ArticleLikeCount.objects.db == "seqproc"
    wait_for(lambda: outbox_keys(SHOP_DATABASE_URL) == [], 15, "the relay to forget the applied rows")


def test_the_models_are_read_only_unmanaged_and_match_seqprocs_tables(shop: Settings) -> None:
    from django.db import models

    from seqproc.contrib.django.models import (
        ArticleLike,
        ArticleLikeCount,
        DeadLetter,
        ParkedKey,
        ProductStock,
        ReadOnlyError,
        Reservation,
    )

    pairs: list[tuple[type[models.Model], Any]] = [
        (ArticleLike, ArticleLikeTable),
        (ArticleLikeCount, ArticleLikeCountTable),
        (ProductStock, ProductStockTable),
        (Reservation, ReservationTable),
        (DeadLetter, DeadLetterTable),
        (ParkedKey, ParkedKeyTable),
    ]
    for model, table in pairs:
        assert model._meta.managed is False
        assert model._meta.db_table == table.__tablename__
        columns = {field.column for field in model._meta.concrete_fields if field.column}
        assert columns == set(table_of(table).columns.keys()), model.__name__
        assert list(model._default_manager.all()) == []  # readable (empty after clean)
    # (article_id, user_id) on Django 5.2; before it, article_id stands in (see ArticleLike's docstring).
    assert ArticleLike._meta.pk is not None
    assert ArticleLike._meta.pk.name == ("pk" if django.VERSION >= (5, 2) else "article_id")

    count = ArticleLikeCount(article_id=1, like_count=1)
    for write in (
        count.save,
        count.delete,
        lambda: ArticleLikeCount.objects.create(article_id=1, like_count=1),
        lambda: ArticleLikeCount.objects.get_or_create(article_id=1),
        lambda: ArticleLikeCount.objects.update_or_create(article_id=1),
        lambda: ArticleLikeCount.objects.bulk_create([count]),
        lambda: ArticleLikeCount.objects.bulk_update([count], ["like_count"]),
        lambda: ArticleLikeCount.objects.filter(article_id=1).update(like_count=5),
        lambda: ArticleLikeCount.objects.all().delete(),
    ):
        with pytest.raises(ReadOnlyError, match="ArticleLikeCount is read-only"):
            write()


def test_djangos_migrate_creates_nothing_of_seqprocs(django_project: str, service_settings: Settings) -> None:
    """Alembic owns seqproc's schema: Django's ``migrate``, on either alias, creates none of its tables."""
    from seqproc.models.tables import Base

    fresh_shop, fresh_seqproc = database_url("_django_fresh"), database_url("_fresh")
    for url in (fresh_shop, fresh_seqproc):
        recreate_database(url)
    try:
        env = {"SHOP_DATABASE_URL": fresh_shop, "SEQPROC_DATABASE_URL": fresh_seqproc}
        for args in (["migrate", "--no-input"], ["migrate", "--no-input", "--database", "seqproc"]):
            done = manage(service_settings, *args, **env)
            assert done.returncode == 0, done.stderr
        seqprocs = set(Base.metadata.tables)
        assert {"article_like", "dead_letter", "parked_key", "product_stock", "reservation"} <= seqprocs
        shop_tables = table_names(fresh_shop)
        assert {"shop_order", "auth_user", "django_migrations"} <= shop_tables
        assert not shop_tables & seqprocs
        # The router keeps every Django table out of seqproc's database; Django still records what it skipped.
        assert table_names(fresh_seqproc) <= {"django_migrations"}
        # And seqproc's app has no migrations to make.
        check = manage(service_settings, "makemigrations", "--check", "--dry-run", **env)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        for url in (fresh_shop, fresh_seqproc):
            drop_database(url)


def test_settings_come_from_the_seqproc_dict_over_the_environment(
    django_project: str, service_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from seqproc.contrib.django import checks, conf

    monkeypatch.setenv("SEQPROC_PARTITIONS", "16")
    monkeypatch.setenv("SEQPROC_BROKER_URL", "redis://from-env:6379/0")
    with override_settings(SEQPROC={"partitions": 4, "Result_Backend": "redis://from-dict:6379/1"}):
        loaded = conf.load()
    assert (loaded.seqproc.partitions, loaded.seqproc.result_backend) == (4, "redis://from-dict:6379/1")
    assert loaded.seqproc.broker_url == "redis://from-env:6379/0"  # not in the dict: the environment's
    assert loaded.database == "default"  # neither in the dict nor in SEQPROC_DJANGO_DATABASE
    monkeypatch.setenv("SEQPROC_DJANGO_DATABASE", "seqproc")
    with override_settings(SEQPROC=None):
        assert conf.load().database == "seqproc"

    bad: list[tuple[Any, str]] = [
        ({"PARTITIONS": 0}, r"^SEQPROC\['PARTITIONS'\]: Input should be greater than or equal to 1 \(got '0'\)"),
        ({"SEQPROC_PARTITIONS": 4}, r"^SEQPROC\['SEQPROC_PARTITIONS'\]: not a seqproc setting"),
        ({"DJANGO_DATABASE": "nowhere"}, r"^SEQPROC\['DJANGO_DATABASE'\]: must name a database of DATABASES"),
        ({"partitions": 4, "PARTITIONS": 4}, r"given twice"),
        ("redis://", r"^SEQPROC: must be a dict"),
    ]
    for value, message in bad:
        with override_settings(SEQPROC=value), pytest.raises(ImproperlyConfigured, match=message):
            conf.load()
    monkeypatch.setenv("SEQPROC_PARTITIONS", "0")
    with (
        override_settings(SEQPROC={}),
        pytest.raises(ImproperlyConfigured, match=r"^SEQPROC_PARTITIONS: Input should be"),
    ):
        conf.load()

    # seqproc's tables in another alias without the router: the system check says so.
    from django.core.checks import run_checks

    assert checks.check_router() == []
    with override_settings(DATABASE_ROUTERS=[]):
        assert "seqproc.E001" in [m.id for m in run_checks()]  # registered, and run by a plain `manage.py check`

    # At start: the app reads the dict once and points the producer at it; a bad value stops the start.
    (tmp_path / "dict_settings.py").write_text(
        textwrap.dedent(
            """
            import os
            from shop_project.settings import *  # noqa: F403
            SEQPROC = {**SEQPROC, "PARTITIONS": int(os.environ["DICT_PARTITIONS"])}
            """
        )
    )
    show = "from seqproc.producer.api import current_settings; print(current_settings().partitions)"
    env = {"SEQPROC_PARTITIONS": "16", "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    started = manage(service_settings, "shell", "-c", show, "--settings", "dict_settings", DICT_PARTITIONS="8", **env)
    assert (started.returncode, started.stdout.split()[-1:]) == (0, ["8"]), started.stderr
    failed = manage(service_settings, "shell", "-c", show, "--settings", "dict_settings", DICT_PARTITIONS="0", **env)
    assert failed.returncode != 0
    assert "ImproperlyConfigured: SEQPROC['PARTITIONS']: Input should be greater than or equal to 1" in failed.stderr


@pytest.fixture
def poison(engine: Engine) -> Iterator[None]:
    """A constraint that product 6660 cannot satisfy once it has 100 units: its restock of 150 fails for good."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"ALTER TABLE product_stock ADD CONSTRAINT test_django_poison CHECK (product_id <> {POISONED} "
                "OR total_received < 100)"
            )
        )
    yield
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE product_stock DROP CONSTRAINT IF EXISTS test_django_poison"))
        conn.execute(text("DELETE FROM parked_key WHERE entity_key = :key"), {"key": f"product:{POISONED}"})


def admin_client(username: str, *, superuser: bool, permissions: tuple[str, ...] = ()) -> Any:
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    User.objects.filter(username=username).delete()
    if superuser:
        user = User.objects.create_superuser(username, f"{username}@example.com", uuid.uuid4().hex)
    else:
        user = User.objects.create_user(username, password=uuid.uuid4().hex, is_staff=True)
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="seqproc", codename__in=permissions)
        )
    client = Client()
    client.force_login(user)
    return client


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_admin_lists_dead_letters_and_parked_keys_and_replays_a_parked_key(
    shop: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess], poison: None
) -> None:
    from django.contrib.admin.models import LogEntry

    from seqproc.contrib.django.models import DeadLetter, ParkedKey, ProductStock

    start_worker(shop)
    key = f"product:{POISONED}"
    bad = producer.restock(POISONED, 150)
    behind = producer.restock(POISONED, 10)
    assert (bad.wait(30).status, bad.wait(30).reason) == ("rejected", "dead_lettered")
    assert (behind.wait(30).status, behind.wait(30).reason) == ("rejected", "parked")

    admin = admin_client("seqproc-admin", superuser=True)
    letters = admin.get("/admin/seqproc/deadletter/")
    assert letters.status_code == 200
    listed = letters.context["cl"].result_list  # newest first
    assert [(d.entity_key, d.event_key) for d in listed] == [
        (key, behind.idempotency_key),
        (key, bad.idempotency_key),
    ]
    assert key in letters.content.decode()
    assert "test_django_poison" in letters.content.decode()
    parked = admin.get("/admin/seqproc/parkedkey/")
    assert parked.status_code == 200
    assert key in parked.content.decode()
    assert [row.waiting for row in parked.context["cl"].result_list] == [2]  # its dead letters waiting
    letter = DeadLetter.objects.filter(entity_key=key).order_by("id").first()
    assert letter is not None
    detail = admin.get(f"/admin/seqproc/deadletter/{letter.pk}/change/")
    assert detail.status_code == 200
    assert bad.event_id in detail.content.decode()
    assert admin.get("/admin/seqproc/deadletter/add/").status_code == 403
    assert admin.get("/admin/seqproc/productstock/").status_code == 200
    assert admin.get("/admin/seqproc/articlelikecount/").status_code == 200
    assert admin.get("/admin/seqproc/reservation/").status_code == 200

    with engine.begin() as conn:  # the cause is fixed
        conn.execute(text("ALTER TABLE product_stock DROP CONSTRAINT test_django_poison"))

    # A staff member who may only look sees the list but not the action: nothing is sent.
    viewer = admin_client("seqproc-viewer", superuser=False, permissions=("view_parkedkey", "view_deadletter"))
    assert viewer.get("/admin/seqproc/parkedkey/").status_code == 200
    refused = viewer.post(
        "/admin/seqproc/parkedkey/", {"action": "replay", "_selected_action": [key], "index": 0}, follow=True
    )
    assert refused.context["action_form"] is None  # no actions offered...
    assert messages_of(refused) == []  # ...and the POST did nothing

    replayed = admin.post(
        "/admin/seqproc/parkedkey/", {"action": "replay", "_selected_action": [key], "index": 0}, follow=True
    )
    # "replayed 2": had the viewer's request gone through, this one would have found nothing left to replay.
    [report] = messages_of(replayed)
    assert report.startswith(f"{key}: applied (replayed 2) on partition "), report
    assert [r.wait(30).status for r in (bad, behind)] == ["applied", "applied"]  # their receipts now say so
    assert not ParkedKey.objects.filter(entity_key=key).exists()
    assert ProductStock.objects.get(product_id=POISONED).total_received == 160
    assert DeadLetter.objects.filter(entity_key=key, replayed_at__isnull=True).count() == 0
    assert LogEntry.objects.filter(object_id=key, change_message__contains="replay of").count() == 1

    # Again, from the dead letters' list (all of them: replayed ones are not shown by default): the key is no longer
    # parked, which the action says; nothing is sent, nothing applied twice.
    assert admin.get("/admin/seqproc/deadletter/").context["cl"].result_list.count() == 0
    again = admin.post(
        "/admin/seqproc/deadletter/?state=all",
        {"action": "replay", "_selected_action": [letter.pk], "index": 0},
        follow=True,
    )
    [refused] = messages_of(again)
    assert refused.startswith(f"{key} is not parked: replay applies a parked key's dead letters in order"), refused
    assert ProductStock.objects.get(product_id=POISONED).total_received == 160


def test_the_example_views_through_the_test_client(
    shop: Settings,
    engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    from django.test import Client
    from shop.models import Order
    from shop.views import DECLINED_CARD

    product = 41
    start_worker(shop)
    assert producer.restock(product, 3).wait(30).status == "applied"
    client = Client()

    def post(path: str, body: dict[str, Any], **headers: str) -> Any:
        return client.post(path, body, content_type="application/json", headers=headers)

    first = post("/articles/21/like", {"user_id": 5}, **{"Idempotency-Key": "req-1"})
    retry = post("/articles/21/like", {"user_id": 5}, **{"Idempotency-Key": "req-1"})
    assert (first.status_code, retry.status_code) == (202, 202)
    assert post("/articles/21/like", {"user_id": 0}).status_code == 400

    declined = post("/checkout", {"product_id": product, "quantity": 1, "card": DECLINED_CARD})
    assert declined.status_code == 402
    too_many = post("/checkout", {"product_id": product, "quantity": 2_000_000})
    assert too_many.status_code == 400
    assert "quantity" in too_many.json()["error"]
    assert Order.objects.count() == 0  # both rolled back: no order...
    assert outbox_keys(SHOP_DATABASE_URL) == ["like:req-1", "like:req-1"]  # ...and no reservation event

    held = post("/checkout", {"product_id": product, "quantity": 2, "customer": "ada"})
    short = post("/checkout", {"product_id": product, "quantity": 2, "customer": "bob"})
    assert (held.status_code, short.status_code) == (201, 201)
    held_order, short_order = held.json()["order_id"], short.json()["order_id"]
    early = post(f"/orders/{held_order}/pay", {})
    assert early.status_code == 409
    assert "not applied yet" in early.json()["error"]

    start_relay(relay_settings(shop))

    def reservation(order_id: int) -> Any:
        return client.get(f"/orders/{order_id}").json()["reservation"]

    assert wait_for(lambda: reservation(held_order), 30, "the first reservation applied") == "active"
    assert wait_for(lambda: reservation(short_order), 30, "the second reservation applied") == "rejected"
    paid = post(f"/orders/{held_order}/pay", {})
    assert (paid.status_code, paid.json()["status"]) == (200, "paid")
    assert post(f"/orders/{held_order}/pay", {}).json()["status"] == "paid"  # a retried payment: no second commit
    failed = post(f"/orders/{short_order}/pay", {})
    assert (failed.status_code, failed.json()["status"]) == (409, "failed")

    from seqproc.contrib.django.models import ProductStock

    wait_for(lambda: ProductStock.objects.get(product_id=product).sold == 2, 30, "the commit applied")
    stock = ProductStock.objects.get(product_id=product)
    assert (stock.available, stock.reserved, stock.sold, stock.total_received) == (1, 0, 2, 3)
    assert client.get("/articles/21").json() == {"article_id": 21, "like_count": 1, "likes": 1}
    keys = ledger_keys(engine)
    assert {"like:req-1", f"reserve:{held.json()['reservation_id']}", f"commit:{held.json()['reservation_id']}"} <= keys
    assert sum(1 for k in keys if k.startswith("commit:")) == 1

    # The admin's lists over that data: the count beside its rows, the stock, both reservations.
    admin = admin_client("seqproc-admin", superuser=True)
    counts = admin.get("/admin/seqproc/articlelikecount/").context["cl"].result_list
    assert [(c.article_id, c.like_count, c.like_rows) for c in counts] == [(21, 1, 1)]
    [listed_stock] = admin.get("/admin/seqproc/productstock/").context["cl"].result_list
    assert (listed_stock.product_id, listed_stock.sold) == (product, 2)
    reservations = admin.get("/admin/seqproc/reservation/").context["cl"].result_list
    assert sorted(r.status for r in reservations) == ["committed", "rejected"]


def test_the_admin_replays_a_user_domains_key_without_its_domain_module(
    shop: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routing a key needs no domain module: the Django process replays ``tally:1`` although it does not load the
    domain that declares it (the worker does). It used to answer HTTP 500."""
    from seqproc.models import domain as registry
    from tests import domains_fixture as fixture

    with engine.begin() as conn:
        fixture.create_tables(conn)
        fixture.poison(conn, 1)
    try:
        start_worker(shop, SEQPROC_DOMAINS="tests.domains_fixture")
        sent = producer.send(fixture.Add(tally_id=1, amount=3, label="x1"), idempotency_key="x1")
        assert sent.wait(30).reason == "dead_lettered"
        with engine.begin() as conn:
            fixture.cure(conn, 1)
        # This process as a Django server without SEQPROC_DOMAINS: the tally domain is unknown here.
        monkeypatch.delitem(registry._REGISTRY.models, "tally.add")
        assert "tally" not in {d.entity for d in registry.domains()}

        admin = admin_client("seqproc-admin", superuser=True)
        replayed = admin.post(
            "/admin/seqproc/parkedkey/", {"action": "replay", "_selected_action": ["tally:1"], "index": 0}, follow=True
        )
        assert replayed.status_code == 200
        [report] = messages_of(replayed)
        assert report.startswith("tally:1: applied (replayed 1) on partition "), report
        assert sent.wait(30).status == "applied"
        with engine.connect() as conn:
            assert fixture.applied_labels(conn, 1) == ["x1"]
    finally:
        with engine.begin() as conn:
            fixture.drop_tables(conn)
            conn.execute(text("DELETE FROM parked_key WHERE entity_key = 'tally:1'"))


def test_the_admin_retries_and_discards_dead_letters(
    shop: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    from django.contrib.admin.models import LogEntry

    from seqproc.contrib.django.models import DeadLetter
    from seqproc.models.wire import article_key, partition_for, queue_name
    from seqproc.worker.ops.inspect import article_state
    from tests.conftest import publish_raw

    start_worker(shop)
    article = next(a for a in range(1, 10_000) if partition_for(article_key(a), 8) != partition_for(article_key(a), 16))
    for key, queue, user in (
        ("misrouted", queue_name(partition_for(article_key(article), 8)), 1),  # sent with 8 partitions
        ("bad-user", queue_name(partition_for(article_key(article), 16)), 0),  # fails the schema
    ):
        event = {"type": "like", "key": key, "id": f"id-{key}", "stamp": 1, "article_id": article, "user_id": user}
        publish_raw(
            shop, queue, json.dumps([[], {"events": [event]}, {}]), "application/json", {"task": "seqproc.apply"}
        )
    wait_for(lambda: DeadLetter.objects.count() == 2, 30, "two dead letters")
    misrouted = DeadLetter.objects.get(event_key="misrouted")
    invalid = DeadLetter.objects.get(event_key="bad-user")

    admin = admin_client("seqproc-admin", superuser=True)
    page = admin.get("/admin/seqproc/deadletter/")
    assert {(d.pk, d.state) for d in page.context["cl"].result_list} == {(misrouted.pk, "open"), (invalid.pk, "open")}
    assert {"replay", "retry", "discard"} <= {name for name, _ in page.context["action_form"].fields["action"].choices}

    def act(action: str, letter: DeadLetter, **fields: str) -> list[str]:
        done = admin.post(
            "/admin/seqproc/deadletter/?state=all",
            {"action": action, "_selected_action": [letter.pk], "index": 0, **fields},
            follow=True,
        )
        assert done.status_code == 200
        return messages_of(done)

    home = partition_for(article_key(article), 16)
    assert act("retry", misrouted) == [
        f"dead letter {misrouted.pk} sent again as like 'misrouted': applied on partition {home}"
    ]
    with engine.connect() as conn:
        assert article_state(conn, article)["like_count"] == 1
    [refused] = act("retry", misrouted)  # twice: refused, nothing sent
    assert refused.startswith(f"dead letter {misrouted.pk} was retried at "), refused
    [still_invalid] = act("retry", invalid)
    assert f"dead letter {invalid.pk} cannot be sent again: user_id: must be >= 1 (got 0)" in still_invalid

    assert act("discard", invalid) == ["Discard needs a reason: type it in the Reason field"]
    assert act("discard", invalid, reason="test data") == [f"dead letter {invalid.pk} discarded: test data"]
    invalid.refresh_from_db()
    misrouted.refresh_from_db()
    assert (invalid.state, invalid.discarded_by, invalid.discard_reason) == ("discarded", "seqproc-admin", "test data")
    assert (misrouted.state, misrouted.retried_as) == ("retried", "misrouted")
    assert admin.get("/admin/seqproc/deadletter/").context["cl"].result_list.count() == 0  # open ones only
    retried = admin.get("/admin/seqproc/deadletter/?state=retried").context["cl"].result_list
    assert [d.pk for d in retried] == [misrouted.pk]
    changes = set(
        LogEntry.objects.filter(object_id__in=[str(misrouted.pk), str(invalid.pk)]).values_list(
            "change_message", flat=True
        )
    )
    assert changes == {"discarded: test data", f"retried as like 'misrouted': applied on partition {home}"}

    # Replay and retry need seqproc.replay_deadletter; discard its own permission.
    retrier = admin_client("seqproc-retrier", superuser=False, permissions=("view_deadletter", "replay_deadletter"))
    offered = retrier.get("/admin/seqproc/deadletter/").context["action_form"].fields["action"].choices
    assert {name for name, _ in offered} == {"", "replay", "retry"}
