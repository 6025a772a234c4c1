"""`seqproc status` against PostgreSQL, Redis and a real worker: queue depths, the age of the oldest waiting event,
owners and epochs, counters, rates, parked keys and dead letters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, delete, insert, text

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import DeadLetter, ParkedKey
from seqproc.models.wire import article_key, partition_for, product_key, queue_name
from seqproc.worker.ops.lag import collect
from tests.conftest import ROOT, settings_env, wait_for
from tests.faults.landing import unacked_count

pytestmark = pytest.mark.services

PARTITIONS = 16


def run_status(settings: Settings, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqproc", "status", *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def status_json(settings: Settings, interval: str = "0.2") -> dict[str, Any]:
    done = run_status(settings, "--json", "--interval", interval)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # exactly one JSON object
    snapshot = json.loads(lines[0])
    assert [e["partition"] for e in snapshot["partitions"]] == list(range(PARTITIONS))
    assert [e["queue"] for e in snapshot["partitions"]] == [queue_name(p) for p in range(PARTITIONS)]
    return snapshot


def by_partition(snapshot: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {e["partition"]: e for e in snapshot["partitions"]}


def first_id_on(partition: int, key: Any, *, start: int = 1, avoid: int | None = None) -> int:
    """The first id from ``start`` whose entity key routes to ``partition``."""
    n = start
    while partition_for(key(n), PARTITIONS) != partition or n == avoid:
        n += 1
    return n


def queue_depths(client: redis.Redis) -> dict[int, int]:
    pipe = client.pipeline(transaction=False)
    for p in range(PARTITIONS):
        pipe.llen(queue_name(p))
    return dict(enumerate(int(n) for n in pipe.execute()))


def test_status_reports_lag_then_owner_and_counters(clean: Settings, start_worker, engine: Engine) -> None:
    part_a, part_b = 2, 11
    article_a = first_id_on(part_a, article_key)
    article_b = first_id_on(part_b, article_key)
    unknown_product = first_id_on(part_a, product_key, start=900_000)  # on partition A, never restocked
    client = redis.Redis.from_url(clean.broker_url)

    # No worker: the events wait in their queues.
    before_first_send = time.time()
    receipts = [producer.like(article_a, 1)]
    after_first_send = time.time()
    time.sleep(0.5)  # the later events are younger by this much: the age must be the oldest event's
    receipts += [producer.like(article_a, user) for user in (2, 3)]
    receipts.append(producer.reserve(unknown_product, 1, reservation_id="status-r1"))  # rejected: unknown_product
    receipts += producer.send_many([{"type": "like", "article_id": article_b, "user_id": u} for u in range(1, 6)])
    receipts.append(producer.like(article_b, 6, idempotency_key="status-dup"))
    receipts.append(producer.like(article_b, 6, idempotency_key="status-dup"))  # duplicate
    depths = queue_depths(client)
    assert depths[part_a] >= 1
    assert depths[part_b] >= 1
    assert all(n == 0 for p, n in depths.items() if p not in (part_a, part_b))

    before_status = time.time()
    first = status_json(clean)
    after_status = time.time()
    entries = by_partition(first)
    assert {p: e["depth"] for p, e in entries.items()} == depths
    assert all(e["unacked"] == 0 for e in entries.values())
    for p in (part_a, part_b):
        assert 0 < entries[p]["oldest_age_s"] < 60
    # The oldest waiting event of partition A is the first one sent, 0.5 s before the others.
    assert before_status - after_first_send <= entries[part_a]["oldest_age_s"] <= after_status - before_first_send
    assert entries[part_a]["oldest_age_s"] >= 0.5
    assert all(e["oldest_age_s"] is None for p, e in entries.items() if p not in (part_a, part_b))
    assert first["totals"]["depth"] == sum(depths.values())
    assert first["totals"]["oldest_age_s"] == max(entries[part_a]["oldest_age_s"], entries[part_b]["oldest_age_s"])
    # Nothing is applied without a worker: the rate over the 0.2 s interval is zero everywhere.
    assert all(e["applied_per_s"] == 0.0 for e in entries.values())

    worker = start_worker(clean)
    outcomes = producer.wait_all(receipts, timeout_s=60)
    assert [o.status for o in outcomes].count("applied") == 9
    assert [o.status for o in outcomes].count("duplicate") == 1
    assert [o.status for o in outcomes].count("rejected") == 1
    wait_for(
        lambda: sum(queue_depths(client).values()) == 0 and unacked_count(client) == 0,
        30,
        "queues drained and acked",
    )

    second = status_json(clean)
    after = by_partition(second)
    for p, e in after.items():
        assert e["depth"] == 0
        assert e["unacked"] == 0
        assert e["oldest_age_s"] is None
        assert e["owner"] is not None
        assert f"/{worker.pid}/" in e["owner"]
        assert e["epoch"] >= 1
        assert e["epoch"] == entries[p]["epoch"] + 1
        assert e["lease_owner"] == e["owner"]  # a static worker's fetch fence holds its owner token
        assert e["applied_per_s"] == 0.0  # idle during the sampling interval
    applied = {p: after[p]["applied"] - entries[p]["applied"] for p in after}
    duplicates = {p: after[p]["duplicates"] - entries[p]["duplicates"] for p in after}
    rejected = {p: after[p]["rejected"] - entries[p]["rejected"] for p in after}
    expected_applied = dict.fromkeys(range(PARTITIONS), 0) | {part_a: 3, part_b: 6}
    assert applied == expected_applied
    assert duplicates == dict.fromkeys(range(PARTITIONS), 0) | {part_b: 1}
    assert rejected == dict.fromkeys(range(PARTITIONS), 0) | {part_a: 1}
    assert second["totals"]["applied"] - first["totals"]["applied"] == 9
    assert second["totals"]["owners"] == 1
    assert second["totals"]["depth"] == 0
    assert second["totals"]["oldest_age_s"] is None


def test_rates_come_from_the_previous_snapshot(clean: Settings, engine: Engine) -> None:
    client = redis.Redis.from_url(clean.broker_url)
    now = collect(engine, client, PARTITIONS)
    assert all(e["applied_per_s"] is None for e in now["partitions"])  # one sample: no rate
    # An earlier snapshot, 2 s before, with 10 fewer events applied on partition 4 (as read back from JSON).
    earlier = json.loads(json.dumps(now))
    earlier["at"] = (datetime.fromisoformat(now["at"]) - timedelta(seconds=2)).isoformat()
    by_partition(earlier)[4]["applied"] -= 10
    rated = collect(engine, client, PARTITIONS, previous=earlier)
    rates = {e["partition"]: e["applied_per_s"] for e in rated["partitions"]}
    # 10 events over the time between the two snapshots: 2 s, plus however long the two reads took (a loaded
    # machine's seconds as much as a quiet one's milliseconds).
    elapsed_s = (datetime.fromisoformat(rated["at"]) - datetime.fromisoformat(earlier["at"])).total_seconds()
    assert elapsed_s >= 2
    assert rates[4] == pytest.approx(10 / elapsed_s, rel=1e-6)
    assert all(r == 0.0 for p, r in rates.items() if p != 4)
    assert rated["totals"]["applied_per_s"] == pytest.approx(rates[4])


def test_status_counts_parked_keys_and_dead_letters(clean: Settings, engine: Engine) -> None:
    parked_entity = article_key(first_id_on(3, article_key, start=7_000_000))
    baseline = {p: e["parked_keys"] for p, e in by_partition(status_json(clean, "0")).items()}
    dead = table_of(DeadLetter)
    letter = {"queue": queue_name(3), "body": "{}", "error": "status test", "entity_key": parked_entity}
    with engine.begin() as conn:
        conn.execute(insert(table_of(ParkedKey)), {"entity_key": parked_entity, "partition": 3, "reason": "test"})
        conn.execute(
            insert(dead),
            [
                letter | {"partition": 3, "replayed_at": None},
                letter | {"partition": 3, "replayed_at": None},
                letter | {"partition": 3, "replayed_at": datetime.now().astimezone()},  # replayed: not counted
                letter | {"partition": 5, "queue": queue_name(5), "replayed_at": None},
                letter
                | {"partition": None, "queue": "elsewhere", "entity_key": None, "replayed_at": None, "error": "other"},
            ],
        )
    try:
        snapshot = status_json(clean, "0")
    finally:
        with engine.begin() as conn:
            conn.execute(delete(table_of(ParkedKey)).where(table_of(ParkedKey).c.entity_key == parked_entity))
    entries = by_partition(snapshot)
    assert {p: e["parked_keys"] for p, e in entries.items()} == baseline | {3: baseline[3] + 1}
    assert {p: e["dead_letters"] for p, e in entries.items()} == dict.fromkeys(range(PARTITIONS), 0) | {3: 2, 5: 1}
    assert snapshot["totals"]["dead_letters"] == 3
    assert snapshot["totals"]["dead_letters_other"] == 1
    assert snapshot["totals"]["parked_keys"] == sum(baseline.values()) + 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dead_letter")).scalar_one() == 5


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("│┃").split("│")]


def test_status_prints_a_table(clean: Settings) -> None:
    article = first_id_on(6, article_key)
    producer.like(article, 1)
    done = run_status(clean, "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    header = next(line for line in done.stdout.splitlines() if "partition" in line)
    assert [c.strip() for c in header.strip().strip("┃").split("┃")] == [
        "partition",
        "depth",
        "oldest",
        "owner",
        "epoch",
        "applied/s",
        "applied",
        "dup",
        "rejected",
        "parked",
        "dead",
        "outbox",
    ]
    rows = {cells[0]: cells for cells in map(_cells, done.stdout.splitlines()) if len(cells) == 12}
    assert set(rows) == {str(p) for p in range(PARTITIONS)} | {"total"}
    assert rows["6"][1] == "1"
    assert rows["6"][2].endswith("s")
    assert rows["6"][2] != "-"
    assert rows["7"][1] == "0"
    assert rows["7"][2] == "-"
    assert rows["total"][1] == "1"


def test_watch_refreshes_until_ctrl_c(clean: Settings) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "seqproc", "status", "--watch", "--json", "--interval", "0.2"],
        cwd=ROOT,
        env=settings_env(clean),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job starts with SIGINT ignored, and Python then never raises KeyboardInterrupt: give
        # the command the Ctrl-C a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        producer.like(first_id_on(9, article_key), 1)
        second = json.loads(process.stdout.readline())
        third = json.loads(process.stdout.readline())
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0
    assert err == ""
    assert first["at"] < second["at"] < third["at"]
    assert all(e["applied_per_s"] is None for e in first["partitions"])  # nothing to compare the first one with
    assert all(e["applied_per_s"] == 0.0 for e in third["partitions"])  # each later one uses the one before
    assert by_partition(third)[9]["depth"] == 1


def test_status_and_the_lag_job_report_the_outbox(clean: Settings, engine: Engine) -> None:
    """Events committed to the outbox and not applied yet: per partition and in the totals, split by whether the
    relay sent them; the snapshot_lag job records them too."""
    import seqproc
    from seqproc.worker.beat.jobs import snapshot_lag
    from seqproc.worker.relay import Relay

    article = first_id_on(5, article_key)
    with engine.begin() as conn:
        seqproc.outbox.send_many(conn, [{"type": "like", "article_id": article, "user_id": u} for u in range(1, 8)])
    snapshot = status_json(clean)
    assert by_partition(snapshot)[5]["outbox"] == 7
    assert sum(e["outbox"] for e in snapshot["partitions"]) == 7
    totals = snapshot["totals"]
    assert (totals["outbox_depth"], totals["outbox_unsent"]) == (7, 7)
    assert totals["outbox_oldest_age_s"] >= 0

    Relay(clean, engine, engine, redis.Redis.from_url(clean.broker_url)).tick()  # sent, not applied: no worker
    totals = status_json(clean)["totals"]
    assert (totals["outbox_depth"], totals["outbox_unsent"]) == (7, 0)

    class Run:  # what the job body needs of its singleton run
        def check(self) -> None:
            pass

    assert "outbox 7 event(s) not applied (0 unsent)" in snapshot_lag(engine, clean, Run())  # type: ignore[arg-type]
    with engine.connect() as conn:
        lag = dict(conn.execute(text("SELECT partition, outbox_depth FROM partition_lag")).all())
        oldest = conn.execute(text("SELECT outbox_oldest_age_s FROM partition_lag WHERE partition = 5")).scalar()
    assert lag[5] == 7
    assert sum(lag.values()) == 7
    assert oldest is not None
