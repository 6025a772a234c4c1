"""The domain property harness (``tests.domain_properties``) on PostgreSQL, for the built-in domains whose
PostgreSQL path is code of its own: likes (``seqproc/domains/likes_store.py``: pipelined loads, ``_write_pg``) and
stock (``seqproc/domains/stock_store.py``), through the PostgreSQL store of the apply core (``PostgresStore``). The
unit suite runs the same cases on SQLite (``tests/unit/test_domain_properties.py``); the balance domain's run on
PostgreSQL is in ``test_balance.py``.

Each example empties the test database itself (``check_domain``); ``engine`` is the session's migrated database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from tests.domain_properties import PROPERTY_SETTINGS, check_domain
from tests.unit.test_domain_properties import LIKES, STOCK

pytestmark = pytest.mark.services


def test_the_cases_run_on_postgresql(engine: Engine) -> None:
    """Not SQLite by mistake: the dialect the stores branch on."""
    assert engine.dialect.name == "postgresql"


@PROPERTY_SETTINGS
@given(data=st.data())
def test_likes_on_postgresql(engine: Engine, data: st.DataObject) -> None:
    check_domain(engine, LIKES, data)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_stock_on_postgresql(engine: Engine, data: st.DataObject) -> None:
    check_domain(engine, STOCK, data)
