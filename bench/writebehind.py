"""Redis write-behind: producers count in Redis (one pipelined round trip per like; a DECR per reservation) and a
flusher thread moves what they wrote to PostgreSQL every ``FLUSH_INTERVAL_S``. Fast, and what it costs is shown:

- ``at_risk_max``: the most events at one time acknowledged to their caller but held only in Redis (the pending
  list), i.e. what a Redis crash without persistence would have lost. The true peak: the list length that each
  RPUSH returns, the largest over all producers;
- ``at_risk_sampled_max``: the same list's length as the flusher read it before each flush (every
  ``FLUSH_INTERVAL_S``): it misses the peaks between two reads, so it is at most ``at_risk_max``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from .direct import libpq_url, reset_tables, verify_tables
from .scenarios import Op, Workload

FLUSH_INTERVAL_S = 0.1
FLUSH_CHUNK = 5_000
PENDING = "wb:pending"


class WriteBehindStrategy:
    name = "redis_writebehind"

    def __init__(self, url: str, redis_url: str) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(redis_url)
        self.at_risk_sampled_max = 0
        self.reserved = 0
        #: Per producer index, the longest pending list its pushes returned (one slot each: no lock on the hot path).
        self._at_risk_peaks: dict[int, int] = {}
        #: Per producer index, the units it reserved.
        self._reserved: dict[int, int] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def setup(self, workload: Workload) -> None:
        reset_tables(self.url, workload)
        self.redis.flushdb()
        if workload.stock:
            self.redis.set("wb:stock:1", workload.stock)
        self.at_risk_sampled_max = 0
        self._at_risk_peaks.clear()
        self._reserved.clear()
        self.reserved = 0
        self._stop.clear()
        self._flusher = threading.Thread(target=self._flush_loop, name="write-behind-flusher", daemon=True)
        self._flusher.start()

    def producer(self, index: int) -> Callable[[Op], int]:
        client = redis.Redis(connection_pool=self.redis.connection_pool)
        peaks = self._at_risk_peaks
        peaks[index] = 0
        reserved = self._reserved
        reserved[index] = 0

        def call(op: Op) -> int:
            if op.kind == "reserve":
                if client.decr(f"wb:stock:{op.entity}") < 0:
                    client.incr(f"wb:stock:{op.entity}")  # sold out: give the unit back
                    return 0
                pending = int(client.rpush(PENDING, f"r:{op.entity}:{op.n}"))
                reserved[index] += 1
            else:
                pipe = client.pipeline(transaction=False)
                pipe.incr(f"wb:count:{op.entity}")  # what the application reads
                pipe.rpush(PENDING, f"l:{op.entity}:{op.n}")  # what the flusher writes to PostgreSQL
                pending = int(pipe.execute()[1])
            # RPUSH returns the list's length with this event in it: every event the flusher has not taken yet.
            peaks[index] = max(peaks[index], pending)
            return 0

        return call

    @property
    def at_risk_max(self) -> int:
        return max(self._at_risk_peaks.values(), default=0)

    def _flush_loop(self) -> None:
        with psycopg.connect(libpq_url(self.url)) as conn:
            while not self._stop.is_set():
                self._flush_once(conn)
                time.sleep(FLUSH_INTERVAL_S)
            while self._flush_once(conn):
                pass

    def _flush_once(self, conn: psycopg.Connection[Any]) -> bool:
        waiting = int(self.redis.llen(PENDING))
        self.at_risk_sampled_max = max(self.at_risk_sampled_max, waiting)
        items = self.redis.lpop(PENDING, FLUSH_CHUNK) or []
        if not items:
            return False
        likes, reservations, counts = [], [], Counter[int]()
        for raw in items:
            kind, entity, n = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(":")
            if kind == "l":
                likes.append((int(entity), int(n)))
                counts[int(entity)] += 1
            else:
                reservations.append((int(n), int(entity)))
        with conn.cursor() as cur:
            if likes:
                cur.executemany("INSERT INTO bench_like VALUES (%s, %s) ON CONFLICT DO NOTHING", likes)
                cur.executemany(
                    "UPDATE bench_like_count SET like_count = like_count + %s WHERE article_id = %s",
                    [(n, a) for a, n in counts.items()],
                )
            if reservations:
                cur.executemany("INSERT INTO bench_reservation VALUES (%s, %s)", reservations)
                cur.execute(
                    "UPDATE bench_stock SET available = available - %s WHERE product_id = 1", (len(reservations),)
                )
        conn.commit()
        return True

    def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        assert self._flusher is not None
        self._flusher.join(max(0.0, deadline - time.monotonic()))
        if self._flusher.is_alive():
            raise TimeoutError("write-behind flusher did not drain in time")

    def report(self, index: int) -> dict[str, Any]:
        return {"reserved": self._reserved.get(index, 0), "at_risk_peak": self._at_risk_peaks.get(index, 0)}

    def absorb(self, reports: list[dict[str, Any]], *, processes: bool) -> None:
        self.reserved = sum(r["reserved"] for r in reports)
        self._at_risk_peaks = {i: r["at_risk_peak"] for i, r in enumerate(reports)}

    def verify(self, workload: Workload) -> tuple[bool, str, dict[str, Any]]:
        ok, detail = verify_tables(self.url, workload, self.reserved)
        return ok, detail, {"at_risk_max": self.at_risk_max, "at_risk_sampled_max": self.at_risk_sampled_max}

    def teardown(self) -> None:
        self._stop.set()
