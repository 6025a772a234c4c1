"""`seqproc demo` without reachable services runs on the embedded default and says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_falls_back_to_embedded_when_services_are_unreachable() -> None:
    env = dict(os.environ, COLUMNS="200")
    # Nothing listens on port 1: the demo must notice and use SQLite and the memory transport.
    env["SEQPROC_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/nothing"
    env["SEQPROC_BROKER_URL"] = "redis://127.0.0.1:1/0"
    env["SEQPROC_RESULT_BACKEND"] = "redis://127.0.0.1:1/1"
    run = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--threads", "2", "--events", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "is not reachable: running on the embedded default" in run.stdout
    assert "SQLite file" in run.stdout
    assert "every invariant held" in run.stdout
