"""The array literals the PostgreSQL store sends instead of Python lists, read back by the real server."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

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
