"""The README's main command, `seqproc demo`, on the real services: it must finish and report every invariant held."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from sqlalchemy import Engine, text

from seqproc.models.settings import Settings
from seqproc.worker.cli.codes import RET_FAILED
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.services


def run_demo(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqproc", "demo", *args],
        cwd=ROOT,
        env=settings_env(settings, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_on_services_holds_every_invariant(clean: Settings) -> None:
    run = run_demo(clean, "--threads", "4", "--events", "150", "--workers", "2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 worker processes over 16 partitions" in run.stdout
    assert "every invariant held" in run.stdout
    assert "embedded" not in run.stdout
    for row in (
        "events sent",
        "applied",
        "duplicates skipped",
        "rejected",
        "hot article like_count",
        "events per second",
    ):
        assert row in run.stdout
    # The progress bars (their last frame, as printed to a pipe) end full, on the number of events the table reports.
    sent = re.search(r"events sent\D+([\d,]+)", run.stdout)
    assert sent, run.stdout[-3000:]
    count = sent[1].replace(",", "")
    for bar in ("sent", "outcomes"):
        assert re.search(rf"^{bar} +\S+ +{count}/{count} ", run.stdout, re.MULTILINE), f"no full {bar} bar"


def test_the_demo_exits_1_naming_the_invariant_broken(clean: Settings, engine: Engine) -> None:
    """Something wrote around seqproc before the demo ran: a like count without its rows. The demo's closing check
    finds it, names it, and the demo exits 1 (RET_FAILED), not 0."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO article_like_count (article_id, like_count) VALUES (987654, 3)"))
    run = run_demo(clean, "--threads", "2", "--events", "40", "--workers", "1")
    assert run.returncode == RET_FAILED, run.stdout[-3000:] + run.stderr[-3000:]
    assert "INVARIANTS BROKEN" in run.stdout
    assert "article 987654: like_count 3 != 0 rows" in run.stdout
    assert "every invariant held" not in run.stdout
