"""``seqproc bench --producer-mode processes`` and its variants (``--receipts``, ``--connect``, ``--warm-up``,
``--after-sending``), tiny: real forked producers, a real seqproc worker, real PostgreSQL and Redis. Each run is
checked by the bench (``correct``) and read again here from its database; the clock stops when the partitions'
counters say every event was applied, counted from the workload (not from receipts the producers may not keep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from seqproc.models.db import make_engine
from seqproc.models.settings import Settings
from seqproc.worker.cli.bench import load_bench
from seqproc.worker.ops.inspect import product_state
from tests.conftest import ROOT

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

PRODUCERS, EVENTS = 2, 20
ALL_FOUR = ["--receipts", "drop", "--connect", "first-call", "--warm-up", "other-article", "--after-sending", "exit"]


def bench_url(pg_url: str) -> str:
    database = f"{make_url(pg_url).database}_bench_variants"
    return make_url(pg_url).set(database=database).render_as_string(hide_password=False)


def run_bench(scenario: str, flags: list[str], pg_url: str, redis_base: str, results: Path) -> tuple[dict, Path]:
    """``seqproc bench --producer-mode processes ... --json`` on a database of the test's own: its JSON, its file."""
    env = dict(os.environ, SEQPROC_DATABASE_URL=pg_url, SEQPROC_BROKER_URL=f"{redis_base}/0")
    env.pop("SEQPROC_RESULT_BACKEND", None)
    env.pop("SEQPROC_OUTBOX_DATABASE_URL", None)
    command = [sys.executable, "-m", "seqproc", "bench", "--producer-mode", "processes", "--scenario", scenario]
    command += ["--producers", str(PRODUCERS), "--events", str(EVENTS), "--strategies", "atomic,seqproc_batched"]
    command += [
        "--json",
        "--no-chart",
        "--results-dir",
        str(results),
        "--database",
        make_url(bench_url(pg_url)).database,
    ]
    done = subprocess.run(command + flags, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [saved] = results.glob("*.json")
    printed = json.loads(done.stdout)
    assert json.loads(saved.read_text()) == printed
    return printed, saved


@pytest.mark.parametrize(
    ("scenario", "flags", "file_name", "outcomes_read"),
    [
        ("hot", [], "hot-processes-p2.json", True),
        ("hot", ["--receipts", "drop"], "hot-processes-receipts-drop-p2.json", False),
        ("hot", ["--connect", "first-call"], "hot-processes-connect-first-call-p2.json", True),
        ("hot", ["--after-sending", "exit"], "hot-processes-after-sending-exit-p2.json", False),
        (
            "hot",
            ALL_FOUR,
            "hot-processes-receipts-drop-connect-first-call-warm-up-other-article-after-sending-exit-p2.json",
            False,
        ),
        ("flash", ["--receipts", "drop", "--warm-up", "other-article"], None, False),
    ],
)
def test_each_variant_runs_correct_and_is_recorded(
    scenario: str,
    flags: list[str],
    file_name: str | None,
    outcomes_read: bool,
    pg_url: str,
    redis_base: str,
    tmp_path: Path,
) -> None:
    data, saved = run_bench(scenario, flags, pg_url, redis_base, tmp_path)
    if file_name is not None:
        assert saved.name == file_name
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    assert data["producer_variant"] == {
        "receipts": given.get("--receipts", "keep"),
        "connect": given.get("--connect", "hook"),
        "warm_up": given.get("--warm-up", "none"),
        "after_sending": given.get("--after-sending", "stay"),
    }
    for name, result in data["strategies"].items():
        assert result["correct"] is True, (name, result["detail"])
        assert result["events"] == PRODUCERS * EVENTS
        assert 0 < result["sent_s"] <= result["elapsed_s"]
    batched = data["strategies"]["seqproc_batched"]
    assert 0 <= batched["unapplied_at_sent"] <= PRODUCERS * EVENTS
    assert batched["worker_cores_in_tail"] >= 0
    assert batched["worker_waited_for_cpu_in_tail_s"] >= 0
    assert ("outcomes not read" not in batched["detail"]) is outcomes_read
    if outcomes_read:
        assert f"outcomes {{'applied': {PRODUCERS * EVENTS}}}" in batched["detail"]
    # Read again: the last run was seqproc_batched, its tables are as it left them.
    engine = make_engine(bench_url(pg_url))
    try:
        with engine.connect() as conn:
            counts = dict(conn.execute(text("SELECT article_id, like_count FROM article_like_count")).fetchall())
            reserved = product_state(conn, 1)["reserved"] if scenario == "flash" else 0
    finally:
        engine.dispose()
    warm_ups = PRODUCERS if given.get("--warm-up") == "other-article" else 0
    if scenario == "hot":
        assert counts.get(1) == PRODUCERS * EVENTS
    else:
        assert 1 not in counts
        assert reserved == PRODUCERS * EVENTS // 2  # the stock: half the demand
    assert counts.get(1_001, 0) == warm_ups  # the warm-up article, no other


def test_the_drain_waits_for_the_workloads_events_not_for_receipts_in_this_process(
    pg_url: str, redis_base: str
) -> None:
    """Forked producers keep their receipts in their own memory: the parent's drain must count the workload. Here
    nothing is sent at all, so the drain must time out (it used to return at once in process mode)."""
    load_bench()  # the checkout's bench/, as seqproc_bench
    from seqproc_bench.run import bench_settings, make_strategy, prepare
    from seqproc_bench.scenarios import workload

    settings = bench_settings(
        Settings(database_url=pg_url, broker_url=f"{redis_base}/0"),
        database=make_url(bench_url(pg_url)).database or "",
    )
    prepare(settings)
    strategy = make_strategy("seqproc_batched", settings, workers=1)
    strategy.setup(workload("hot", PRODUCERS, EVENTS))
    try:
        with pytest.raises(TimeoutError, match=f"seqproc_batched: {PRODUCERS * EVENTS} events not applied in 0.5 s"):
            strategy.drain(0.5)
    finally:
        strategy.teardown()


def test_the_soak_counts_until_every_event_it_sent_is_applied(
    pg_url: str, redis_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak's producers outrun the worker: its events/s must wait for the backlog, not stop at the last send.
    The likes are counted as the soak stops its worker (whose graceful stop would apply what is left)."""
    load_bench()
    from seqproc_bench import seqproc_strategy
    from seqproc_bench.run import bench_settings, prepare, soak

    settings = bench_settings(
        Settings(database_url=pg_url, broker_url=f"{redis_base}/0"),
        database=make_url(bench_url(pg_url)).database or "",
    )
    prepare(settings)
    counted: list[int] = []
    teardown = seqproc_strategy.SeqprocStrategy.teardown

    def count_then_teardown(self: seqproc_strategy.SeqprocStrategy) -> None:
        with self.engine.connect() as conn:
            counted.append(
                conn.execute(text("SELECT coalesce(sum(like_count), 0) FROM article_like_count")).scalar_one()
            )
        teardown(self)

    monkeypatch.setattr(seqproc_strategy.SeqprocStrategy, "teardown", count_then_teardown)
    report = soak(settings, duration_s=1.0, producers=2, sample_every_s=0.25)
    assert report["events"] > 0
    assert report["sending_s"] <= report["duration_s"]
    assert counted == [report["events"]]  # every like sent was applied before the soak stopped its worker
