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

from seqproc.models.db import ensure_database, make_engine

__all__ = ["alembic_config", "migrate", "migrate_outbox", "outbox_alembic_config"]

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
