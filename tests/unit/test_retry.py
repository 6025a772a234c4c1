"""Retry in place: connection errors are retried without limit, a statement that keeps timing out is given up after a
few attempts, and the batcher then parks the entity of the event at fault while the others are applied."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from psycopg import OperationalError as PsycopgOperationalError
from psycopg import errors as pg_errors
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from seqproc.models.events import Event, parse_event
from seqproc.models.outcomes import outcome_store
from seqproc.models.settings import Settings
from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import DeadLetter, ParkedKey
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker import runtime
from seqproc.worker.consume import batching
from seqproc.worker.consume.batching import Batcher, Held
from seqproc.worker.consume.decode import Decoded
from seqproc.worker.consume.retry import (
    DEFAULT_MAX_STATEMENT_TIMEOUTS,
    is_statement_timeout,
    is_transient,
    retry_in_place,
)
from seqproc.worker.ops.inspect import article_state


def statement_timeout() -> OperationalError:
    """What SQLAlchemy raises when PostgreSQL cancels a statement past ``statement_timeout`` (SQLSTATE 57014)."""
    return OperationalError(
        "UPDATE article_like_count SET ...",
        None,
        pg_errors.QueryCanceled("canceling statement due to statement timeout"),
    )


def connection_lost() -> OperationalError:
    return OperationalError("SELECT 1", None, PsycopgOperationalError("server closed the connection unexpectedly"))


def failing(errors: list[BaseException], result: str = "done") -> tuple[Callable[[], str], list[int]]:
    """An attempt that raises ``errors`` one per call, then returns ``result``; and its call counter."""
    calls = [0]

    def attempt() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return attempt, calls


def retry(attempt: Callable[[], str]) -> str:
    return retry_in_place(attempt, what="test", backoff_max_s=0.001, should_stop=lambda: False, first_backoff_s=0)


def test_a_statement_timeout_is_recognised_and_still_transient() -> None:
    assert is_statement_timeout(statement_timeout())
    assert is_transient(statement_timeout())
    assert not is_statement_timeout(connection_lost())
    assert not is_statement_timeout(IntegrityError("INSERT", None, Exception("duplicate key")))
    # As a pipeline raises them when it ends (the stores' writes): psycopg's own errors, not SQLAlchemy's wrappers.
    assert is_statement_timeout(pg_errors.QueryCanceled("canceling statement due to statement timeout"))
    assert is_transient(pg_errors.QueryCanceled("canceling statement due to statement timeout"))
    assert is_transient(PsycopgOperationalError("server closed the connection unexpectedly"))
    assert not is_transient(pg_errors.UniqueViolation("duplicate key"))


def test_a_statement_that_always_times_out_is_raised_after_a_bounded_number_of_attempts() -> None:
    attempt, calls = failing([statement_timeout() for _ in range(100)])
    with pytest.raises(OperationalError) as caught:
        retry(attempt)
    assert isinstance(caught.value.orig, pg_errors.QueryCanceled)
    assert calls[0] == DEFAULT_MAX_STATEMENT_TIMEOUTS == 3


def test_a_statement_that_times_out_once_or_twice_then_passes_is_retried() -> None:
    attempt, calls = failing([statement_timeout(), connection_lost(), statement_timeout()])
    assert retry(attempt) == "done"
    assert calls[0] == 4


def test_connection_errors_are_retried_without_limit() -> None:
    attempt, calls = failing([connection_lost() for _ in range(25)])
    assert retry(attempt) == "done"
    assert calls[0] == 26


def test_a_permanent_error_is_raised_at_once() -> None:
    attempt, calls = failing([IntegrityError("INSERT", None, Exception("duplicate key"))])
    with pytest.raises(IntegrityError):
        retry(attempt)
    assert calls[0] == 1


class FakeMessage:
    def __init__(self) -> None:
        self.channel = None
        self.delivery_tag = id(self)
        self.acked = False

    def ack(self) -> None:
        self.acked = True


def like(article: int, n: int) -> Event:
    return parse_event(
        {"type": "like", "key": f"k{n}", "id": f"e{n}", "stamp": 1000 + n, "article_id": article, "user_id": 1}
    )


def test_the_batcher_parks_the_entity_of_an_event_that_always_times_out(
    sqlite_url: str, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch times out, its events are tried one at a time, the one that keeps timing out is dead-lettered and
    its entity parked; the others are applied and every message is acked: the partition is not blocked."""
    partition = partition_for(article_key(1), 16)
    articles = [a for a in range(1, 500) if partition_for(article_key(a), 16) == partition][:3]
    events = [like(article, n) for n, article in enumerate(articles)]
    slow = events[1]
    with sqlite_engine.begin() as conn:
        conn.execute(insert(table_of(Partition)), [{"partition": p, "epoch": 5} for p in range(16)])
    settings = Settings(
        database_url=sqlite_url, broker_url="memory://", result_backend="memory://", retry_backoff_max_s=0.01
    )
    rt = runtime.Runtime(settings, sqlite_engine, outcome_store("memory://", ttl_s=60), {partition: 5})

    tried: dict[str, int] = {"batch": 0, "slow alone": 0}

    def times_out_with(original: Callable[..., Any], events_of: Callable[..., list[Event]]) -> Callable[..., Any]:
        def apply(conn: Any, *args: Any, **kwargs: Any) -> Any:
            held = events_of(*args)
            if slow in held:
                what = "batch" if len(held) > 1 else "slow alone"
                tried[what] += 1
                if tried[what] > 10:  # retried without end: stop the test (the count below then fails it)
                    raise RuntimeError("retried without end")
                raise statement_timeout()
            return original(conn, *args, **kwargs)

        return apply

    monkeypatch.setattr(
        batching,
        "apply_partitions",
        times_out_with(batching.apply_partitions, lambda batches: [e for b in batches for e in b.events]),
    )
    monkeypatch.setattr(batching, "apply_batch", times_out_with(batching.apply_batch, lambda _p, events: events))

    messages = [FakeMessage() for _ in events]
    held = [
        Held(message, Decoded(partition, queue_name(partition), f"task-{n}", [event]))
        for n, (message, event) in enumerate(zip(messages, events, strict=True))
    ]
    Batcher(rt)._apply({partition: held})

    assert tried == {"batch": 3, "slow alone": 3}
    assert all(message.acked for message in messages)
    with sqlite_engine.connect() as conn:
        assert [article_state(conn, a)["like_count"] for a in articles] == [1, 0, 1]
        assert set(conn.execute(select(table_of(ParkedKey).c.entity_key)).scalars()) == {slow.entity_key}
        letters = conn.execute(select(DeadLetter.event_key, DeadLetter.error)).all()
    assert [key for key, _ in letters] == [slow.key]
    assert "statement timeout" in letters[0][1]
