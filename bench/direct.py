"""The usual answers to a hot row, straight to PostgreSQL from each producer's own connection (psycopg 3, no ORM:
the baselines get no overhead they would not have in a lean application):

- ``atomic``: ``INSERT like; UPDATE count = count + 1`` (flash sale: ``UPDATE ... WHERE available >= 1``);
- ``for_update``: ``SELECT ... FOR UPDATE``, then write the value read plus one;
- ``optimistic``: read the value and a version, write ``WHERE version = v``; retry when another writer won;
- ``serializable``: read-modify-write under SERIALIZABLE; retry on a serialization failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors

from .scenarios import Op, Workload

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_like (
    article_id bigint NOT NULL, user_id bigint NOT NULL, PRIMARY KEY (article_id, user_id));
CREATE TABLE IF NOT EXISTS bench_like_count (
    article_id bigint PRIMARY KEY, like_count bigint NOT NULL CHECK (like_count >= 0), version bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench_stock (
    product_id bigint PRIMARY KEY, available bigint NOT NULL CHECK (available >= 0), version bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench_reservation (reservation_id bigint PRIMARY KEY, product_id bigint NOT NULL);
"""

#: A producer gives up on one event after this many conflicts (it never happened in our runs; it bounds a run).
MAX_ATTEMPTS = 10_000


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def reset_tables(url: str, workload: Workload) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("TRUNCATE bench_like, bench_like_count, bench_stock, bench_reservation")
        articles = sorted(workload.expected_likes())
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO bench_like_count (article_id, like_count, version) VALUES (%s, 0, 0)",
                [(a,) for a in articles],
            )
        if workload.stock:
            conn.execute(
                "INSERT INTO bench_stock (product_id, available, version) VALUES (1, %s, 0)", (workload.stock,)
            )


def verify_tables(url: str, workload: Workload, applied_reserves: int) -> tuple[bool, str]:
    with psycopg.connect(libpq_url(url)) as conn:
        if workload.scenario == "flash":
            available = conn.execute("SELECT available FROM bench_stock WHERE product_id = 1").fetchone()
            rows = conn.execute("SELECT count(*) FROM bench_reservation").fetchone()
            assert available is not None
            assert rows is not None
            want = min(workload.stock, workload.total)
            ok = rows[0] == want == applied_reserves and available[0] == workload.stock - want
            return ok, f"sold {rows[0]} of {workload.stock} (demand {workload.total}), available {available[0]}"
        counts: dict[int, int] = dict(conn.execute("SELECT article_id, like_count FROM bench_like_count").fetchall())
        rows_by_article: dict[int, int] = dict(
            conn.execute("SELECT article_id, count(*) FROM bench_like GROUP BY 1").fetchall()
        )
        expected = workload.expected_likes()
        bad = [a for a, n in expected.items() if counts.get(a) != n or rows_by_article.get(a) != n]
        return not bad, f"{sum(counts.values())} likes counted, {len(bad)} articles off"


class DirectStrategy:
    """One of the four baselines. Each producer thread holds its own connection for the whole run."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        #: Reservations the producers committed: per producer (each counts its own), then their sum.
        self._reserved: list[int] = []
        self.reserved = 0
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []

    def setup(self, workload: Workload) -> None:
        reset_tables(self.url, workload)
        self._reserved = [0] * workload.producers
        self.reserved = 0

    def producer(self, index: int) -> Callable[[Op], int]:
        conn = psycopg.connect(libpq_url(self.url))
        if self.name == "serializable":
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        self._connections.append(conn)
        step = getattr(self, f"_{self.name}")

        def call(op: Op) -> int:
            """Apply one event; return the number of retries it took."""
            for attempt in range(MAX_ATTEMPTS):
                self._local.reserved = False
                try:
                    if step(conn, op):
                        conn.commit()
                        self._reserved[index] += self._local.reserved
                        return attempt
                    conn.rollback()
                except (errors.SerializationFailure, errors.DeadlockDetected):
                    conn.rollback()
            raise RuntimeError(f"{self.name}: gave up after {MAX_ATTEMPTS} conflicts")

        return call

    def _count_reserved(self, reserved: bool) -> bool:
        """Note whether this producer's event reserved a unit (counted once the transaction commits)."""
        self._local.reserved = reserved
        return True

    # Each step returns True to commit, False to roll back and try again.
    def _atomic(self, conn: psycopg.Connection[Any], op: Op) -> bool:
        if op.kind == "reserve":
            cur = conn.execute(
                "UPDATE bench_stock SET available = available - 1 WHERE product_id = %s AND available >= 1",
                (op.entity,),
            )
            if cur.rowcount:
                conn.execute("INSERT INTO bench_reservation VALUES (%s, %s)", (op.n, op.entity))
            return self._count_reserved(bool(cur.rowcount))
        cur = conn.execute("INSERT INTO bench_like VALUES (%s, %s) ON CONFLICT DO NOTHING", (op.entity, op.n))
        if cur.rowcount:
            conn.execute("UPDATE bench_like_count SET like_count = like_count + 1 WHERE article_id = %s", (op.entity,))
        return True

    def _for_update(self, conn: psycopg.Connection[Any], op: Op) -> bool:
        if op.kind == "reserve":
            row = conn.execute(
                "SELECT available FROM bench_stock WHERE product_id = %s FOR UPDATE", (op.entity,)
            ).fetchone()
            assert row is not None
            ok = row[0] >= 1
            if ok:
                conn.execute("UPDATE bench_stock SET available = %s WHERE product_id = %s", (row[0] - 1, op.entity))
                conn.execute("INSERT INTO bench_reservation VALUES (%s, %s)", (op.n, op.entity))
            return self._count_reserved(ok)
        row = conn.execute(
            "SELECT like_count FROM bench_like_count WHERE article_id = %s FOR UPDATE", (op.entity,)
        ).fetchone()
        assert row is not None
        cur = conn.execute("INSERT INTO bench_like VALUES (%s, %s) ON CONFLICT DO NOTHING", (op.entity, op.n))
        if cur.rowcount:
            conn.execute("UPDATE bench_like_count SET like_count = %s WHERE article_id = %s", (row[0] + 1, op.entity))
        return True

    def _optimistic(self, conn: psycopg.Connection[Any], op: Op) -> bool:
        if op.kind == "reserve":
            row = conn.execute(
                "SELECT available, version FROM bench_stock WHERE product_id = %s", (op.entity,)
            ).fetchone()
            assert row is not None
            if row[0] < 1:
                return self._count_reserved(False)
            cur = conn.execute(
                "UPDATE bench_stock SET available = %s, version = version + 1 WHERE product_id = %s AND version = %s",
                (row[0] - 1, op.entity, row[1]),
            )
            if not cur.rowcount:
                return False  # another writer won: roll back, read again
            conn.execute("INSERT INTO bench_reservation VALUES (%s, %s)", (op.n, op.entity))
            return self._count_reserved(True)
        row = conn.execute(
            "SELECT like_count, version FROM bench_like_count WHERE article_id = %s", (op.entity,)
        ).fetchone()
        assert row is not None
        cur = conn.execute("INSERT INTO bench_like VALUES (%s, %s) ON CONFLICT DO NOTHING", (op.entity, op.n))
        if not cur.rowcount:
            return True
        cur = conn.execute(
            "UPDATE bench_like_count SET like_count = %s, version = version + 1 WHERE article_id = %s AND version = %s",
            (row[0] + 1, op.entity, row[1]),
        )
        return bool(cur.rowcount)

    def _serializable(self, conn: psycopg.Connection[Any], op: Op) -> bool:
        # Plain read-modify-write; SERIALIZABLE turns every lost update into a serialization failure (retried).
        if op.kind == "reserve":
            row = conn.execute("SELECT available FROM bench_stock WHERE product_id = %s", (op.entity,)).fetchone()
            assert row is not None
            ok = row[0] >= 1
            if ok:
                conn.execute("UPDATE bench_stock SET available = %s WHERE product_id = %s", (row[0] - 1, op.entity))
                conn.execute("INSERT INTO bench_reservation VALUES (%s, %s)", (op.n, op.entity))
            conn.commit()  # may raise SerializationFailure: counted only once it commits
            return self._count_reserved(ok)
        row = conn.execute("SELECT like_count FROM bench_like_count WHERE article_id = %s", (op.entity,)).fetchone()
        assert row is not None
        cur = conn.execute("INSERT INTO bench_like VALUES (%s, %s) ON CONFLICT DO NOTHING", (op.entity, op.n))
        if cur.rowcount:
            conn.execute("UPDATE bench_like_count SET like_count = %s WHERE article_id = %s", (row[0] + 1, op.entity))
        return True

    def drain(self, timeout_s: float) -> None:
        """Synchronous: every call had committed when it returned."""

    def report(self, index: int) -> dict[str, Any]:
        return {"reserved": self._reserved[index]}

    def absorb(self, reports: list[dict[str, Any]], *, processes: bool) -> None:
        self.reserved = sum(r["reserved"] for r in reports)

    def verify(self, workload: Workload) -> tuple[bool, str, dict[str, Any]]:
        ok, detail = verify_tables(self.url, workload, self.reserved)
        return ok, detail, {}

    def teardown(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()
