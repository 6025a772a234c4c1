"""The README's main command, `seqproc demo`, on the real services: it must finish and report every invariant held."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from seqproc.models.settings import Settings
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.services


def test_demo_on_services_holds_every_invariant(clean: Settings) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "seqproc", "demo", "--threads", "4", "--events", "150", "--workers", "2"],
        cwd=ROOT,
        env=settings_env(clean, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=300,
    )
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
