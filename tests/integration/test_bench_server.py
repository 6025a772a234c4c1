"""``seqproc bench --server``, tiny: the real gunicorn and uvicorn, the real wrk, a real seqproc worker (and relay),
each strategy's count checked by the bench and read again here from its database; every process it started gone.

wrk is Debian's package (``make test`` installs it when run as root): without it these tests fail in CI and skip
elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from seqproc.models.db import make_engine
from tests.conftest import ROOT, require_tools

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

TOP_KEYS = {
    "server",
    "server_workers",
    "connections",
    "threads",
    "duration_s",
    "workers",
    "article_id",
    "command",
    "strategies",
    "ratios",
    "machine",
    "finished_at",
}
STRATEGY_KEYS = {
    "strategy",
    "endpoint",
    "requests",
    "responses_2xx",
    "non_2xx",
    "socket_errors",
    "wrk_duration_s",
    "requests_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "accepted",
    "elapsed_s",
    "events_per_s",
    "like_rows",
    "like_count",
    "correct",
    "detail",
    "server_cpu_us_per_request",
    "wrk_cpu_us_per_request",
    "worker_cpu_us_per_event",
    "relay_cpu_us_per_event",
    "redis_cpu_us_per_event",
    "events_per_message",
    "x_noop",
    "x_atomic",
}
CONNECTIONS = 8


def bench_processes(tag: bytes) -> set[int]:
    """Processes serving the bench's applications or loading them with wrk now, started by the run whose
    environment holds ``tag`` (another bench running on the machine is not this test's business)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
            if not any(name in command for name in (b"seqproc_bench_wsgi:app", b"seqproc_bench_asgi:app", b"wrk_hot")):
                continue
            if tag in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def run_bench(server: str, strategies: str, pg_url: str, redis_base: str, results: Path) -> tuple[dict, str]:
    """``seqproc bench --server ... --json`` on a database of the test's own; its JSON, and that database's URL."""
    database = f"{make_url(pg_url).database}_bench"
    tag = f"BENCH_TEST_RUN={uuid.uuid4().hex}"
    env = dict(os.environ, SEQPROC_DATABASE_URL=pg_url, SEQPROC_BROKER_URL=f"{redis_base}/0")
    env["BENCH_TEST_RUN"] = tag.split("=", 1)[1]
    env.pop("SEQPROC_RESULT_BACKEND", None)
    env.pop("SEQPROC_OUTBOX_DATABASE_URL", None)
    command = [sys.executable, "-m", "seqproc", "bench", "--server", server, "--server-workers", "2"]
    command += ["--duration-s", "1", "--connections", str(CONNECTIONS), "--strategies", strategies, "--json"]
    command += ["--no-chart", "--results-dir", str(results), "--database", database]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert bench_processes(tag.encode()) == set(), "the bench left a server or wrk behind"
    printed = json.loads(done.stdout)
    saved = json.loads((results / f"server-{server}.json").read_text())
    assert saved == printed
    bench_url = make_url(pg_url).set(database=database).render_as_string(hide_password=False)
    return printed, bench_url


def check_common(data: dict, server: str, names: list[str]) -> None:
    assert set(data) == TOP_KEYS
    assert (data["server"], data["server_workers"], data["duration_s"]) == (server, 2, 1)
    assert (data["connections"], data["threads"], data["article_id"]) == (CONNECTIONS, 2, 1)
    assert list(data["strategies"]) == names
    for name, result in data["strategies"].items():
        assert set(result) == STRATEGY_KEYS, name
        assert result["correct"] is True, result["detail"]
        assert result["endpoint"] == f"/{name}"
        assert result["non_2xx"] == 0
        assert result["responses_2xx"] == result["requests"] > 0
        # Each connection can have one request in flight when wrk stops: answered by the server, unread by wrk.
        assert result["responses_2xx"] <= result["accepted"] <= result["responses_2xx"] + CONNECTIONS
        assert result["requests_per_s"] > 0
        assert result["events_per_s"] > 0
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
        assert result["server_cpu_us_per_request"] > 0


def check_counted(result: dict, bench_url: str, table: str, count_table: str) -> None:
    """The bench's count check, read again from its database: like rows == like_count == accepted requests."""
    assert result["like_rows"] == result["like_count"] == result["accepted"]
    engine = make_engine(bench_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT count(*) FROM {table} WHERE article_id = 1")).scalar_one()
            count = conn.execute(text(f"SELECT like_count FROM {count_table} WHERE article_id = 1")).scalar_one()
    finally:
        engine.dispose()
    assert rows == count == result["accepted"]


def check_floor(floor: dict[str, Any]) -> None:
    """The broker floor: correct means the broker's list held exactly as many messages as the server accepted
    requests (the bench compares the two counts); Redis did the work, no seqproc worker ran."""
    assert floor["correct"], floor["detail"]
    assert floor["accepted"] > 0
    assert floor["like_count"] is None
    assert floor["worker_cpu_us_per_event"] is None
    assert floor["redis_cpu_us_per_event"] > 0


def test_gunicorn_serves_the_noop_broker_and_seqproc_endpoints_and_counts_every_accepted_like(
    pg_url: str, redis_base: str, tmp_path: Path
) -> None:
    require_tools("wrk")
    data, bench_url = run_bench("gunicorn", "noop,broker,seqproc", pg_url, redis_base, tmp_path)
    check_common(data, "gunicorn", ["broker", "noop", "seqproc"])  # as saved: by name
    noop, seqproc = data["strategies"]["noop"], data["strategies"]["seqproc"]
    check_floor(data["strategies"]["broker"])
    assert seqproc["x_noop"] is not None
    assert data["ratios"]["seqproc_vs_broker_events_per_s"] > 0
    assert noop["like_count"] is None
    assert noop["worker_cpu_us_per_event"] is None
    assert noop["x_noop"] == 1.0
    assert noop["x_atomic"] is None  # atomic did not run
    check_counted(seqproc, bench_url, "article_like", "article_like_count")
    assert seqproc["worker_cpu_us_per_event"] > 0
    assert seqproc["redis_cpu_us_per_event"] > 0
    assert seqproc["relay_cpu_us_per_event"] is None
    assert seqproc["events_per_message"] == 1.0  # a sync worker's request sends its one event alone
    assert seqproc["x_noop"] == data["ratios"]["seqproc_vs_noop_events_per_s"]
    assert seqproc["x_noop"] == round(seqproc["events_per_s"] / noop["events_per_s"], 2)
    # Counted until applied: never faster than wrk saw the requests go by.
    assert seqproc["elapsed_s"] >= seqproc["wrk_duration_s"] * 0.9


def test_uvicorn_serves_the_atomic_and_outbox_endpoints_and_counts_every_accepted_like(
    pg_url: str, redis_base: str, tmp_path: Path
) -> None:
    require_tools("wrk")
    data, bench_url = run_bench("uvicorn", "atomic,broker,outbox", pg_url, redis_base, tmp_path)
    check_common(data, "uvicorn", ["atomic", "broker", "outbox"])
    check_floor(data["strategies"]["broker"])
    atomic, outbox = data["strategies"]["atomic"], data["strategies"]["outbox"]
    check_counted(atomic, bench_url, "bench_like", "bench_like_count")
    check_counted(outbox, bench_url, "article_like", "article_like_count")
    assert atomic["worker_cpu_us_per_event"] is None
    assert atomic["x_atomic"] == 1.0
    assert outbox["relay_cpu_us_per_event"] > 0
    assert outbox["worker_cpu_us_per_event"] > 0
    assert outbox["events_per_message"] >= 1
    assert outbox["x_atomic"] == data["ratios"]["outbox_vs_atomic_events_per_s"]
    assert "outbox_vs_noop_events_per_s" not in data["ratios"]  # the no-op did not run
