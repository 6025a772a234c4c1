"""The array literals the PostgreSQL store sends instead of Python lists, read back by the real server."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from seqproc.models.db import make_engine
from seqproc.worker.engine.store.postgres import array, columns

pytestmark = pytest.mark.services

#: Any text PostgreSQL stores (everything but NUL): quotes, backslashes, braces, commas, spaces, "NULL", unicode.
TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.none(), TEXT), max_size=30))
def test_text_arrays_round_trip(engine: Engine, values: list[str | None]) -> None:
    with engine.connect() as conn:
        pg = conn.connection.driver_connection
        assert pg.execute("SELECT %s::text[]", (array(values),)).fetchone()[0] == values


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(TEXT, max_size=30))
def test_text_only_arrays_round_trip(engine: Engine, values: list[str]) -> None:
    """Only strings: the one-join path when none has a quote or a backslash, else element by element."""
    with engine.connect() as conn:
        pg = conn.connection.driver_connection
        assert pg.execute("SELECT %s::text[]", (array(values),)).fetchone()[0] == values


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=30))
def test_bigint_arrays_round_trip(engine: Engine, values: list[int]) -> None:
    with engine.connect() as conn:
        pg = conn.connection.driver_connection
        assert pg.execute("SELECT %s::bigint[]", (array(values),)).fetchone()[0] == values


def test_columns_and_what_is_refused() -> None:
    assert columns([(1, "a"), (2, 'b"\\')], 2) == ["{1,2}", '{"a","b\\"\\\\"}']
    assert columns([], 3) == ["{}", "{}", "{}"]
    assert array(["a", "b c", "", "{x,y}", "NULL"]) == '{"a","b c","","{x,y}","NULL"}'  # one join
    assert array(iter([3, -1])) == "{3,-1}"
    for bad in (True, 1.5, b"x"):
        with pytest.raises(TypeError, match="not supported"):
            array([bad])


def test_statements_keep_custom_plans_so_a_table_that_grows_keeps_its_index(pg_url: str) -> None:
    """psycopg prepares a statement on its fifth run; PostgreSQL would then keep one generic plan for it, chosen
    against the table's statistics of that moment. Planned when a table held a few rows (a new deployment, a flash
    sale's first batches), that plan scans the whole table with an unhashed array filter, batch after batch, as the
    table grows (a flash sale's reservation load: 0.7 s per batch). seqproc's engines plan each run against the
    table as it is (a custom plan may still scan a table its statistics call small, but with a hashed array
    filter: 2.7 ms against 33 ms for 32,000 rows and 100 keys, measured)."""
    table = f"plan_probe_{uuid.uuid4().hex[:8]}"
    statement = f"SELECT id, n FROM {table} WHERE id = ANY(%s::text[])"
    engine = make_engine(pg_url, pool_size=1)
    try:
        with engine.begin() as conn:
            pg = conn.connection.driver_connection
            pg.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, n bigint)")
            pg.execute(f"INSERT INTO {table} SELECT 'k' || g, g FROM generate_series(1, 50) g")
            pg.execute(f"ANALYZE {table}")  # what autovacuum does to a new table soon after its first rows
            batch = array([f"k{i}" for i in range(1, 101)])
            for _ in range(15):  # past psycopg's threshold, and past PostgreSQL's five custom plans
                pg.execute(statement, (batch,)).fetchall()
            pg.execute(f"INSERT INTO {table} SELECT 'm' || g, g FROM generate_series(1, 20000) g")
            assert len(pg.execute(statement, (batch,)).fetchall()) == 50
            generic, custom = pg.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                (f"%FROM {table} WHERE%",),
            ).fetchone()
            assert generic == 0
            assert custom >= 10  # every run planned for its own array and the table's current size
    finally:
        with engine.begin() as conn:
            conn.connection.driver_connection.execute(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()
