"""The apply core's property tests of ``tests/unit/test_apply_sqlite.py`` on PostgreSQL: the PostgreSQL store
(``PostgresStore``: the ledger claimed with ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` in a pipeline) and the
likes and stock domains' PostgreSQL statements. The same test functions, given the session's migrated test database
(emptied before each example) in place of a SQLite file."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from tests.domain_properties import empty_database
from tests.unit.test_apply_sqlite import (
    PropertyDatabase,
    test_any_duplication_and_batching_ends_as_applying_once_in_order,
    test_like_unlike_out_of_order_ends_in_the_newest_action,
    test_one_batch_or_one_event_per_batch_is_the_same,
)

pytestmark = pytest.mark.services

__all__ = [
    "test_any_duplication_and_batching_ends_as_applying_once_in_order",
    "test_like_unlike_out_of_order_ends_in_the_newest_action",
    "test_one_batch_or_one_event_per_batch_is_the_same",
]


@pytest.fixture
def property_db(engine: Engine) -> PropertyDatabase:
    assert engine.dialect.name == "postgresql"
    return PropertyDatabase(engine, lambda: empty_database(engine))
