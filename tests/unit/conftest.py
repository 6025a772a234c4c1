"""Fixtures of the unit suite: no services, a migrated SQLite file per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from seqproc.migrations import migrate
from seqproc.models.db import make_engine
from seqproc.models.tables import Base

#: Every table of seqproc's metadata (the migrations create them all, on SQLite too), children first: emptied
#: between hypothesis examples.
SQLITE_TABLES = tuple(table.name for table in reversed(Base.metadata.sorted_tables))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "seqproc.db")


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """A fresh SQLite file brought up to date by the Alembic migrations (as ``seqproc migrate`` does)."""
    migrate(sqlite_url)
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clear_sqlite(sqlite_engine: Engine) -> Callable[[], None]:
    """Empty every seqproc table: hypothesis runs many examples against one function-scoped database."""

    def clear() -> None:
        with sqlite_engine.begin() as conn:
            for table in SQLITE_TABLES:
                conn.execute(text(f'DELETE FROM "{table}"'))

    return clear
