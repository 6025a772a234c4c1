"""The guide "Write your own domain" (docs/domains.md) and its example, ``examples/wallet``: the guide's code block is
the example's file, character for character, and the example runs end to end with a real ``seqproc worker`` that
loads it through ``SEQPROC_DOMAINS``: the example's own script, the contract's calls (``seqproc.send`` with an
idempotency key, ``seqproc.aio.send``, ``seqproc.wait_all``, a derived key) and ``seqproc enqueue``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

import seqproc
import seqproc.aio
from examples.wallet.wallet import Deposit, Withdraw, wallet_account
from seqproc.models.settings import Settings
from tests.conftest import ROOT, WorkerProcess, settings_env

GUIDE = ROOT / "docs" / "domains.md"
DOMAINS = "examples.wallet.wallet"
#: A marker line in the guide, then a fenced block that must be the named file, whole.
INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->\n```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def test_the_guide_includes_the_wallet_example_verbatim() -> None:
    included = {m["path"]: m["code"] for m in INCLUDE.finditer(GUIDE.read_text())}
    assert list(included) == ["examples/wallet/wallet.py"]
    assert included["examples/wallet/wallet.py"] == (ROOT / "examples/wallet/wallet.py").read_text()


@pytest.fixture
def wallet_table(engine: Engine) -> Iterator[None]:
    """The example creates its table itself (as a user's migration would); the test only cleans it away."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS wallet_account"))
    yield
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS wallet_account"))


def run(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=settings_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def shell_line(document: Path, command: str) -> str:
    """The line of ``document``'s shell blocks that runs ``command``, without its trailing comment."""
    return next(line.split("  #")[0].strip() for line in document.read_text().splitlines() if command in line)


def console(settings: Settings, line: str) -> subprocess.CompletedProcess[str]:
    """``line`` run by a shell from the repository root, with this environment's console scripts first on the
    ``PATH`` (``seqproc`` is the installed script, not ``python -m``)."""
    scripts = str(Path(sys.executable).parent)
    env = settings_env(settings, PATH=f"{scripts}:{os.environ.get('PATH', '')}")
    return subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False
    )


def balance(engine: Engine, account_id: int) -> int | None:
    with engine.connect() as conn:
        query = select(wallet_account.c.balance).where(wallet_account.c.account_id == account_id)
        return conn.execute(query).scalar()


@pytest.mark.services
@pytest.mark.timeout(180)
def test_the_wallet_example_runs_end_to_end_with_a_real_worker(
    clean: Settings, engine: Engine, wallet_table: None, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker(clean, SEQPROC_DOMAINS=DOMAINS)

    # The example's script, as the guide runs it: it creates its table, sends, prints; run twice, all duplicates.
    first = run(clean, "examples.wallet")
    assert first.stdout.splitlines() == [
        "wallet.deposit req-1 applied -",
        "wallet.deposit req-1 duplicate -",
        "wallet.withdraw w-1 applied -",
        "wallet.withdraw w-2 rejected insufficient_funds",
        "wallet:7 balance 70",
    ]
    second = run(clean, "examples.wallet")
    assert [line.split()[2] for line in second.stdout.splitlines()[:4]] == ["duplicate"] * 4
    assert second.stdout.splitlines()[4] == "wallet:7 balance 70"

    # The contract's calls from application code (this process imported the module: no SEQPROC_DOMAINS needed).
    receipts = [
        seqproc.send(Deposit(account_id=8, amount=100), idempotency_key="req-8"),
        seqproc.send(Deposit(account_id=8, amount=100), idempotency_key="req-8"),
        seqproc.send(Withdraw(account_id=8, amount=30, withdrawal_id="w-8-1")),
        seqproc.send(Withdraw(account_id=8, amount=30, withdrawal_id="w-8-1")),  # the same withdrawal again
    ]

    async def from_asyncio() -> list[seqproc.Receipt]:
        sent = [
            await seqproc.aio.send(Withdraw(account_id=8, amount=50, withdrawal_id="w-8-2")),
            await seqproc.aio.send(Withdraw(account_id=8, amount=50, withdrawal_id="w-8-3")),  # 20 left: refused
        ]
        await seqproc.aio.aclose()
        return sent

    receipts += asyncio.run(from_asyncio())
    assert {r.partition for r in receipts} == {receipts[0].partition}  # one key, one partition
    assert [r.idempotency_key for r in receipts[2:]] == ["w-8-1", "w-8-1", "w-8-2", "w-8-3"]  # derived keys
    outcomes = seqproc.wait_all(receipts, timeout_s=30)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("applied", None),
        ("duplicate", None),
        ("applied", None),
        ("duplicate", None),
        ("applied", None),
        ("rejected", "insufficient_funds"),
    ]
    assert [o.first.status for o in outcomes if o.first is not None] == ["applied", "applied"]
    assert balance(engine, 8) == 100 - 30 - 50

    # From the shell: seqproc enqueue knows the domain's types through SEQPROC_DOMAINS.
    shell = run(
        clean, "seqproc", "enqueue", "wallet.deposit", "9", "25", "--wait", "30", "--json", SEQPROC_DOMAINS=DOMAINS
    )
    assert json.loads(shell.stdout)["outcome"] == {"status": "applied"}
    assert balance(engine, 9) == 25
    # The guide's own shell line, as written: the `seqproc` console script, from the repository root.
    guide = shell_line(GUIDE, "seqproc enqueue wallet.deposit")
    assert guide.startswith(f"SEQPROC_DOMAINS={DOMAINS} seqproc enqueue wallet.deposit 8 25 ")
    as_written = console(clean, guide)
    assert as_written.returncode == 0, as_written.stderr
    assert as_written.stdout.split()[-1] == "outcome=applied"
    assert balance(engine, 8) == 100 - 30 - 50 + 25

    with engine.connect() as conn:
        ledger = conn.execute(
            text("SELECT event_type, count(*) FROM idempotency_ledger GROUP BY event_type ORDER BY event_type")
        ).all()
        letters = conn.execute(text("SELECT count(*) FROM dead_letter")).scalar_one()
    # Each key once: deposits req-1, req-8 and the shell's two; withdrawals w-1, w-2, w-8-1, w-8-2, w-8-3.
    assert [tuple(row) for row in ledger] == [("wallet.deposit", 4), ("wallet.withdraw", 5)]
    assert letters == 0
    assert worker.process.poll() is None
