"""Alembic migrations (``versions/``; the outbox's apart, in ``outbox/``), and :func:`migrate` and
:func:`migrate_outbox`, which ``seqproc migrate`` runs.

Alembic is the one owner of seqproc's schema: the Django app's models are unmanaged, and tests run these
migrations, never ``create_all``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, text

from seqproc.models.db import ensure_database, make_engine

__all__ = ["alembic_config", "behind", "migrate", "migrate_outbox", "outbox_alembic_config"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
OUTBOX_MIGRATIONS_DIR = MIGRATIONS_DIR / "outbox"


def alembic_config(database_url: str, *, script_location: Path = MIGRATIONS_DIR) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    # '%' is Alembic's interpolation character; a password may contain it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def outbox_alembic_config(database_url: str) -> Config:
    """The outbox's migrations (version table ``seqproc_outbox_version``), for the application's database."""
    return alembic_config(database_url, script_location=OUTBOX_MIGRATIONS_DIR)


def migrate(database_url: str, *, revision: str = "head") -> None:
    """Create the database if it is missing, then upgrade seqproc's tables to ``revision``."""
    _upgrade(alembic_config(database_url), database_url, revision)


def migrate_outbox(database_url: str, *, revision: str = "head") -> None:
    """Create the outbox tables (``seqproc_outbox``, ``seqproc_outbox_relay``) in ``database_url``: the
    application's database, or seqproc's own."""
    _upgrade(outbox_alembic_config(database_url), database_url, revision)


def _upgrade(config: Config, database_url: str, revision: str) -> None:
    ensure_database(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def behind(engine: Engine) -> tuple[str | None, str] | None:
    """(the database's revision, this seqproc's head) when the database is behind: never migrated (None) or at an
    older revision of these migrations; None when it is current. A revision these migrations do not know was
    written by a newer seqproc: current enough (its migrations add, they do not take away)."""
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = str(script.get_current_head())
    with engine.connect() as conn:
        # Read straight from Alembic's version table (a MigrationContext would log its setup at INFO).
        current = (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            if inspect(conn).has_table("alembic_version")
            else None
        )
    if current == head:
        return None
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError:
            return None  # newer than this seqproc
    return current, head
