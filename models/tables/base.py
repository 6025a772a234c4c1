"""The declarative base, with a naming convention so that Alembic migrations name constraints predictably."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, Table, func
from sqlalchemy.orm import DeclarativeBase, MappedColumn, mapped_column
from sqlalchemy.types import TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: BIGINT on PostgreSQL; INTEGER on SQLite, where only an INTEGER PRIMARY KEY aliases the rowid.
BigInt: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def now_column() -> MappedColumn[datetime]:
    """A ``timestamptz`` column that defaults to the database's clock (``now()``: the transaction's start)."""
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def table_of(model: type[DeclarativeBase]) -> Table:
    """The Core table of a mapped class, typed as such (``__table__`` is declared as a plain FromClause)."""
    return cast(Table, model.__table__)
