"""``seqproc deadletter``: every dead letter listed with its id; ``retry ID`` sends it again once its cause is fixed
(a domain loaded, the right partition count) and the ledger applies it once; ``discard ID --reason`` closes it;
``status`` counts open letters only; ``replay`` refuses a key that is not parked. Real worker processes, the CLI as
a subprocess, PostgreSQL and Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

import seqproc
from seqproc.models.settings import Settings
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker.ops.inspect import article_state
from tests import domains_fixture as fixture
from tests.conftest import ROOT, WorkerProcess, publish_raw, settings_env, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

DOMAINS = "tests.domains_fixture"


def cli(settings: Settings, *args: str, domains: bool = False) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings, SEQPROC_DOMAINS=DOMAINS) if domains else settings_env(settings)
    return subprocess.run(
        [sys.executable, "-m", "seqproc", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def listed(settings: Settings, *args: str) -> list[dict[str, Any]]:
    done = cli(settings, "deadletter", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    letters: list[dict[str, Any]] = json.loads(done.stdout)["dead_letters"]
    return letters


def dead_count(settings: Settings) -> int:
    done = cli(settings, "status", "--json", "--interval", "0")
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout)
    assert sum(e["dead_letters"] for e in snapshot["partitions"]) == snapshot["totals"]["dead_letters"]
    return int(snapshot["totals"]["dead_letters"])


def push_like(settings: Settings, queue: str, key: str, article_id: int, user_id: int) -> None:
    event = {"type": "like", "key": key, "id": f"id-{key}", "stamp": 1, "article_id": article_id, "user_id": user_id}
    body = json.dumps([[], {"events": [event]}, {}])
    publish_raw(settings, queue, body, "application/json", {"task": "seqproc.apply", "id": f"m-{key}", "lang": "py"})


@pytest.fixture
def tally_tables(engine: Engine) -> Iterator[None]:
    with engine.begin() as conn:
        fixture.create_tables(conn)
    yield
    with engine.begin() as conn:
        fixture.drop_tables(conn)
        conn.execute(text("DELETE FROM parked_key WHERE entity_key LIKE 'tally:%'"))


def test_retry_applies_a_letter_once_its_domain_is_loaded_and_only_once(
    clean: Settings, engine: Engine, tally_tables: None, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(clean)  # without SEQPROC_DOMAINS: tally.add is unknown to it
    sent = seqproc.send(fixture.Add(tally_id=1, amount=5, label="t1"), idempotency_key="t1")
    assert sent.wait(15).reason == "dead_lettered"
    [letter] = listed(clean)
    assert (letter["state"], letter["event_key"]) == ("open", "t1")
    letter_id = letter["id"]

    # The text list shows the id, first on the letter's row.
    table = cli(clean, "deadletter", "list")
    assert table.returncode == 0, table.stderr
    assert re.search(rf"^│ {letter_id} +│ .*│ t1 ", table.stdout, re.MULTILINE), table.stdout

    # Not fixed yet, where the retry is sent from: refused, naming why; nothing sent, the letter stays open.
    early = cli(clean, "deadletter", "retry", str(letter_id))
    assert early.returncode == 1
    assert early.stdout == ""
    assert early.stderr.startswith(
        f"seqproc: DeadLetterRefused: dead letter {letter_id} cannot be sent again: type: must be one of like"
    ), early.stderr
    assert "(got 'tally.add'); fix the cause first (load its domain: SEQPROC_DOMAINS)" in early.stderr
    assert [d["state"] for d in listed(clean)] == ["open"]

    # Fixed: the worker loads the domain, so does the operator's shell.
    worker.stop()
    start_worker(clean, SEQPROC_DOMAINS=DOMAINS)
    retried = cli(clean, "deadletter", "retry", str(letter_id), domains=True)
    assert retried.returncode == 0, retried.stderr
    home = partition_for("tally:1", clean.partitions)
    assert retried.stdout.splitlines() == [
        f"dead letter {letter_id}: sent again as tally.add 't1' on partition {home}",
        "tally.add 't1': applied",
    ]
    assert sent.wait(15).status == "applied"  # the original receipt hears it: the event kept its id

    # Twice: refused, since the letter is closed; a resend of the event is a duplicate in the ledger.
    again = cli(clean, "deadletter", "retry", str(letter_id), domains=True)
    assert again.returncode == 1
    assert re.match(
        rf"seqproc: DeadLetterRefused: dead letter {letter_id} was retried at \S+ as 't1': only an open dead letter "
        "can be retried",
        again.stderr,
    ), again.stderr
    resent = seqproc.send(fixture.Add(tally_id=1, amount=5, label="t1"), idempotency_key="t1").wait(15)
    assert (resent.status, resent.first and resent.first.status) == ("duplicate", "applied")
    with engine.connect() as conn:
        assert fixture.applied_labels(conn, 1) == ["t1"]
        assert fixture.total(conn, 1) == 5
    assert listed(clean) == []
    [closed] = listed(clean, "--all")
    assert (closed["id"], closed["state"], closed["retried_as"]) == (letter_id, "retried", "t1")
    assert closed["retried_at"] is not None

    # A parked key's letter: refused, the key's replay keeps the order.
    with engine.begin() as conn:
        fixture.poison(conn, 2)
    assert seqproc.send(fixture.Add(tally_id=2, amount=1, label="p1")).wait(15).reason == "dead_lettered"
    [parked] = listed(clean, "--key", "tally:2")
    refused = cli(clean, "deadletter", "retry", str(parked["id"]), domains=True)
    assert refused.returncode == 1
    assert (
        f"dead letter {parked['id']}: tally:2 is parked, and its events must apply in their order: replay the key "
        "(seqproc deadletter replay tally:2)"
    ) in refused.stderr
    assert [d["state"] for d in listed(clean, "--key", "tally:2")] == ["open"]


def test_discard_closes_a_letter_status_counts_open_ones_and_a_misrouted_one_is_retried_home(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(clean)
    article = next(a for a in range(1, 10_000) if partition_for(article_key(a), 8) != partition_for(article_key(a), 16))
    home = partition_for(article_key(article), clean.partitions)
    push_like(clean, queue_name(home), "bad-user", article, 0)  # fails the schema: user_id must be >= 1
    push_like(clean, queue_name(partition_for(article_key(article), 8)), "misrouted", article, 7)  # 8 partitions
    wait_for(lambda: len(listed(clean)) == 2, 30, "two dead letters")
    letters = {d["event_key"]: d for d in listed(clean)}  # two partitions: in either order
    invalid, misrouted = letters["bad-user"], letters["misrouted"]
    assert dead_count(clean) == 2

    # Still invalid, whatever is loaded: refused, and it stays open.
    refused = cli(clean, "deadletter", "retry", str(invalid["id"]))
    assert refused.returncode == 1
    assert f"dead letter {invalid['id']} cannot be sent again: user_id: must be >= 1 (got 0)" in refused.stderr
    assert cli(clean, "deadletter", "discard", str(invalid["id"]), "--reason", "  ").returncode == 1

    discarded = cli(clean, "deadletter", "discard", str(invalid["id"]), "--reason", "a client bug, fixed in v2")
    assert discarded.returncode == 0, discarded.stderr
    assert discarded.stdout == f"dead letter {invalid['id']}: discarded (a client bug, fixed in v2)\n"
    assert [d["id"] for d in listed(clean)] == [misrouted["id"]]  # hidden by default
    closed = {d["id"]: d for d in listed(clean, "--all")}[invalid["id"]]
    assert (closed["state"], closed["discard_reason"]) == ("discarded", "a client bug, fixed in v2")
    assert "@" in closed["discarded_by"]  # user@host
    assert f"discarded {closed['discarded_at']} by {closed['discarded_by']}" in cli(
        clean, "deadletter", "list", "--all"
    ).stdout.replace("\n", "")
    assert dead_count(clean) == 1
    twice = cli(clean, "deadletter", "discard", str(invalid["id"]), "--reason", "again")
    assert twice.returncode == 1
    assert f"dead letter {invalid['id']} was discarded at " in twice.stderr

    # Routed with the deployment's count this time: applied on its own partition, once.
    retried = cli(clean, "deadletter", "retry", str(misrouted["id"]))
    assert retried.returncode == 0, retried.stderr
    assert f"sent again as like 'misrouted' on partition {home}" in retried.stdout
    assert "like 'misrouted': applied" in retried.stdout
    with engine.connect() as conn:
        assert article_state(conn, article)["like_count"] == 1
        assert conn.execute(text("SELECT key FROM idempotency_ledger")).scalars().all() == ["like:misrouted"]
    assert dead_count(clean) == 0

    # Its entity is not parked: a replay has nothing to do, and says so.
    replay = cli(clean, "deadletter", "replay", article_key(article))
    assert (replay.returncode, replay.stdout) == (1, "")
    assert f"{article_key(article)} is not parked: replay applies a parked key's dead letters in order" in replay.stderr
    assert cli(clean, "deadletter", "retry", "999999").stderr.startswith(
        "seqproc: DeadLetterRefused: dead letter 999999: there is none"
    )
