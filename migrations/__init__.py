"""Alembic migrations (``versions/``), and :func:`migrate`, which ``seqproc migrate`` runs.

Alembic is the one owner of seqproc's schema: the Django app's models are unmanaged, and tests run these
migrations, never ``create_all``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from seqproc.models.db import ensure_database, make_engine

__all__ = ["alembic_config", "migrate"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is Alembic's interpolation character; a password may contain it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, *, revision: str = "head") -> None:
    """Create the database if it is missing, then upgrade it to ``revision``."""
    ensure_database(database_url)
    config = alembic_config(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()
