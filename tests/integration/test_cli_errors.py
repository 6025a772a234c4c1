"""Errors that tell the truth: every command says which service it could not use (its variable, its URL with the
password masked) or which command to run, in one line, with the README's exit codes; an outcome that cannot be read
says that the event was sent. Real PostgreSQL and Redis; an unreachable service is a port nothing listens on."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from sqlalchemy import Engine

import seqproc
import seqproc.aio
from seqproc.models.settings import Settings
from seqproc.worker.cli.codes import RET_CONFIG, RET_REJECTED, RET_TIMEOUT, RET_UNAVAILABLE
from seqproc.worker.ops.inspect import article_state
from tests.conftest import ROOT, WorkerProcess, free_port, settings_env, wait_for
from tests.integration.django_example import database_url, drop_database, recreate_database

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

SECRET = "s3cr3t-pw"


def seqproc_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqproc", *args],
        cwd=ROOT,
        env=settings_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The command's error: one line on stderr, no traceback, no password."""
    assert "Traceback" not in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def closed_redis(db: int) -> str:
    return f"redis://:{SECRET}@127.0.0.1:{free_port()}/{db}"


def closed_postgres() -> str:
    return f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{free_port()}/seqproc"


def test_a_result_backend_that_is_down_says_the_event_was_sent(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    """`enqueue --wait` cannot read the outcome: it says that the like was sent (it was, and a worker applies it),
    with its key, and exits with "sent, outcome unknown" (6), not "unavailable" (5) that invites a second like."""
    start_worker(clean)
    backend = closed_redis(1)
    done = seqproc_cli(clean, "enqueue", "like", "42", "1", "--wait", "3", SEQPROC_RESULT_BACKEND=backend)
    line = one_line(done)
    assert done.returncode == RET_TIMEOUT, line
    assert line.startswith("seqproc: OutcomeUnavailable: like event '")
    assert "was sent (partition" in line
    assert f"SEQPROC_RESULT_BACKEND={backend.replace(SECRET, '***')}" in line
    with engine.connect() as conn:
        wait_for(lambda: article_state(conn, 42)["like_count"] == 1, 30, "the like applied")
    key = line.split("like event '")[1].split("'")[0]
    with engine.connect() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM idempotency_ledger WHERE key = %s", (f"like:{key}",)
            ).scalar_one()
            == 1
        )


def test_waiting_on_an_unreadable_result_backend_raises_a_seqproc_error(clean: Settings, quick_retries: None) -> None:
    """`receipt.wait()`, `wait_all()` and their asyncio forms: OutcomeUnavailable (a SeqprocError) carrying the
    receipts, never redis-py's ConnectionError (once the client's tries are spent: quick_retries)."""
    backend = closed_redis(1)
    seqproc.configure(clean.model_copy(update={"result_backend": backend}))
    receipt = seqproc.like(43, 1)
    with pytest.raises(seqproc.OutcomeUnavailable) as caught:
        receipt.wait(timeout_s=5)
    assert isinstance(caught.value, seqproc.SeqprocError)
    assert caught.value.receipt is receipt
    assert caught.value.setting == "SEQPROC_RESULT_BACKEND"
    assert f"like event {receipt.idempotency_key!r} was sent" in str(caught.value)
    assert SECRET not in str(caught.value)
    receipts = seqproc.send_many([{"type": "like", "article_id": 43, "user_id": u} for u in (2, 3)])
    with pytest.raises(seqproc.OutcomeUnavailable, match="2 events were sent") as caught_all:
        seqproc.wait_all(receipts, timeout_s=5)
    assert caught_all.value.receipts == receipts

    async def waits() -> list[BaseException]:
        errors = []
        for wait in (seqproc.aio.wait(receipt, timeout_s=5), seqproc.aio.wait_all(receipts, timeout_s=5)):
            try:
                await wait
            except BaseException as error:
                errors.append(error)
        await seqproc.aio.aclose()
        return errors

    errors = asyncio.run(waits())
    assert [type(error) for error in errors] == [seqproc.OutcomeUnavailable] * 2
    assert getattr(errors[0], "receipt", None) is receipt
    assert "2 events were sent" in str(errors[1])


@pytest.fixture
def empty_database(clean: Settings) -> Iterator[str]:
    url = database_url("_empty")
    recreate_database(url)
    yield url
    drop_database(url)


def test_a_database_without_seqproc_tables_says_run_migrate(clean: Settings, empty_database: str) -> None:
    done = seqproc_cli(clean, "status", "--interval", "0", SEQPROC_DATABASE_URL=empty_database)
    line = one_line(done)
    assert done.returncode == RET_CONFIG, line
    assert line.startswith("seqproc: NotMigrated: the database at SEQPROC_DATABASE_URL=postgresql+psycopg://")
    assert re.search(r'relation "(partition|seqproc_meta)" does not exist', line), line  # the cause, named
    assert line.endswith("run `seqproc migrate`")


def test_a_missing_database_says_migrate_creates_it(clean: Settings) -> None:
    url = database_url("_missing")
    drop_database(url)
    try:
        done = seqproc_cli(clean, "show", "article", "1", SEQPROC_DATABASE_URL=url)
        line = one_line(done)
        assert done.returncode == RET_CONFIG, line
        assert line.startswith(f'seqproc: DatabaseMissing: database "{url.rsplit("/", 1)[1]}" does not exist')
        assert line.endswith("`seqproc migrate` creates it")
        assert seqproc_cli(clean, "migrate", SEQPROC_DATABASE_URL=url).returncode == 0  # as it says
        shown = seqproc_cli(clean, "show", "article", "1", SEQPROC_DATABASE_URL=url)
        assert shown.returncode == 0, shown.stderr
    finally:
        drop_database(url)


@pytest.mark.parametrize(
    ("variable", "url", "args"),
    [
        ("SEQPROC_DATABASE_URL", closed_postgres(), ("show", "article", "1")),
        ("SEQPROC_DATABASE_URL", closed_postgres(), ("deadletter", "list")),
        ("SEQPROC_OUTBOX_DATABASE_URL", closed_postgres(), ("migrate",)),
        ("SEQPROC_BROKER_URL", closed_redis(0), ("status", "--interval", "0")),
        ("SEQPROC_BROKER_URL", closed_redis(0), ("enqueue", "like", "1", "2")),
    ],
    ids=["database-show", "database-deadletter", "outbox-migrate", "broker-status", "broker-enqueue"],
)
def test_an_unreachable_service_is_named_by_its_variable(
    clean: Settings, variable: str, url: str, args: tuple[str, ...]
) -> None:
    done = seqproc_cli(clean, *args, **{variable: url})
    line = one_line(done)
    assert done.returncode == RET_UNAVAILABLE, line
    assert f"{variable}={url.replace(SECRET, '***')}" in line
    if args[0] == "enqueue":
        assert line.startswith("seqproc: PublishError: ")
        assert line.endswith("they were NOT sent")
    else:
        assert line.startswith("seqproc: ServiceUnavailable: cannot reach ")


def test_a_rejected_outcome_exits_with_its_own_code_and_reads_as_text(
    clean: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(clean)
    rejected = seqproc_cli(clean, "enqueue", "reserve", "4040", "1", "r-404", "--wait", "30")
    assert rejected.returncode == RET_REJECTED, rejected.stderr
    assert rejected.stdout.split()[-2:] == ["outcome=rejected", "reason=unknown_product"]
    again = seqproc_cli(clean, "enqueue", "reserve", "4040", "1", "r-404", "--wait", "30")
    assert again.returncode == RET_REJECTED  # a duplicate of a rejected event: rejected all the same
    assert again.stdout.split()[-3:] == ["outcome=duplicate", "first=rejected", "first_reason=unknown_product"]
    applied = seqproc_cli(clean, "enqueue", "restock", "4041", "5", "--wait", "30")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split()[-1] == "outcome=applied"
    assert "{" not in rejected.stdout + again.stdout + applied.stdout  # no Python dict


def test_show_reads_any_domain_with_its_load(clean: Settings, start_worker: Callable[..., WorkerProcess]) -> None:
    start_worker(clean)
    assert seqproc.send_many([{"type": "balance.deposit", "account_id": 7, "amount": 100}])[0].wait(30).status == (
        "applied"
    )
    for args in (("account", "7"), ("balance", "7"), ("account:7",)):
        shown = seqproc_cli(clean, "show", *args)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[:3] == ["entity      account:7", "account_id  7", "balance     100"]
    as_json = seqproc_cli(clean, "show", "account", "8", "--json")
    assert as_json.stdout.strip() == (
        '{"account_id": 8, "balance": 0, "credited": 0, "debited": 0, "entity": "account:8"}'
    )
    assert seqproc_cli(clean, "show", "article:1").stdout.splitlines()[0] == "article_id  1"
    unknown = seqproc_cli(clean, "show", "nothing", "1")
    assert unknown.returncode == 2
    assert "No such command 'nothing'" in unknown.stderr


def test_a_broker_queue_holds_what_a_refused_result_backend_could_not_confirm(clean: Settings) -> None:
    """Without a worker: the like of an `enqueue --wait` whose outcome cannot be read is in its queue (sent)."""
    done = seqproc_cli(clean, "enqueue", "like", "44", "1", "--wait", "1", SEQPROC_RESULT_BACKEND=closed_redis(1))
    assert done.returncode == RET_TIMEOUT, done.stderr
    queue = done.stderr.split("(partition ")[1].split(")")[0]
    assert redis.Redis.from_url(clean.broker_url).llen(f"seqproc.p{int(queue):02d}") == 1


def test_an_outcome_that_does_not_come_within_wait_exits_6_and_the_event_is_sent(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    """No worker runs: `enqueue --wait 1` gets no outcome in time. It exits with "sent, outcome unknown" (6) and one
    line naming the event's key, and the event is applied once a worker starts (it was sent)."""
    assert start_worker(clean).stop() == 0  # it publishes the partition count (the producer checks it), then goes
    started = time.monotonic()
    done = seqproc_cli(clean, "enqueue", "like", "45", "1", "--wait", "1")
    line = one_line(done)
    assert done.returncode == RET_TIMEOUT, line
    assert line.startswith("seqproc: OutcomeTimeout: "), line
    assert time.monotonic() - started < 30
    start_worker(clean)
    with engine.connect() as conn:
        wait_for(lambda: article_state(conn, 45)["like_count"] == 1, 30, "the like applied")
