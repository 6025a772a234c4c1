"""The Django example (``examples/django_shop``) as the Django tests run it.

Its own database is the test database's name plus ``_django`` (``seqproc_test_django`` by default): the shop's orders,
Django's tables and the outbox table, migrated by the example's ``manage.py migrate`` and ``migrate_outbox``.
seqproc's tables are the test database itself (the example's ``seqproc`` alias), Redis the conftest's databases.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import make_url, text

from seqproc.migrations import migrate_outbox
from seqproc.models.db import ensure_database, make_engine
from seqproc.models.settings import Settings
from tests.conftest import ROOT, TEST_DATABASE_URL, settings_env, wait_for

EXAMPLE_DIR = ROOT / "examples" / "django_shop"
SETTINGS_MODULE = "shop_project.settings"
#: The shop's tables emptied between tests (the outbox's too: it lives in the shop's database).
SHOP_TABLES = ("shop_order", "seqproc_outbox", "seqproc_outbox_relay")


def database_url(suffix: str, base: str = TEST_DATABASE_URL) -> str:
    url = make_url(base)
    return url.set(database=f"{url.database}{suffix}").render_as_string(hide_password=False)


SHOP_DATABASE_URL = database_url("_django")


def example_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of the example's processes (``manage.py``, gunicorn) for ``settings``."""
    return settings_env(
        settings, **({"SHOP_DATABASE_URL": SHOP_DATABASE_URL, "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE} | extra)
    )


def manage(settings: Settings, *args: str, timeout_s: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE_DIR,
        env=example_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@functools.cache
def prepare_shop_database(settings: Settings) -> str:
    """Create and migrate the shop's database once per session: the outbox by seqproc's migrations, the rest by
    Django's ``migrate`` (which creates nothing of seqproc's)."""
    ensure_database(SHOP_DATABASE_URL)
    migrate_outbox(SHOP_DATABASE_URL)
    done = manage(settings, "migrate", "--no-input")
    assert done.returncode == 0, done.stderr
    return SHOP_DATABASE_URL


def reset_shop_database() -> None:
    engine = make_engine(SHOP_DATABASE_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(SHOP_TABLES)} RESTART IDENTITY"))
    finally:
        engine.dispose()


def recreate_database(url: str) -> None:
    """An empty database at ``url`` (dropped first if it exists)."""
    drop_database(url)
    ensure_database(url)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            return {row[0] for row in rows}
    finally:
        engine.dispose()


@contextmanager
def serve_shop(settings: Settings, log_path: Path, *, port: int, workers: int) -> Iterator[str]:
    """gunicorn serving the example with ``workers`` processes on ``port``, over clean databases; its URL. Stopped
    (SIGTERM) at the end."""
    prepare_shop_database(settings)
    reset_shop_database()
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "shop_project.wsgi:application"),
                *("--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--timeout", "60"),
            ],
            cwd=EXAMPLE_DIR,
            env=example_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:

            def up() -> bool:
                if server.poll() is not None:
                    raise AssertionError(f"gunicorn exited with {server.returncode}")
                try:
                    return httpx.get(f"{url}/articles/1", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(up, 30, "gunicorn to serve", interval_s=0.2)
            wait_for(lambda: len(children(server.pid)) == workers, 20, "every gunicorn worker")
            yield url
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (gunicorn's workers, for its master), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found
