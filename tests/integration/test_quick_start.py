"""The README's manual quick start, run as written: its shell block, by bash, with the installed ``seqproc`` console
script, against this suite's PostgreSQL and Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from seqproc.models.settings import Settings
from seqproc.worker.ops.inspect import article_state
from tests.conftest import ROOT, settings_env

pytestmark = [pytest.mark.services, pytest.mark.timeout(150)]

#: The block after the README's ``<!-- quick start -->`` marker.
BLOCK = re.compile(r"^<!-- quick start -->\n```sh\n(?P<script>.*?)^```$", re.MULTILINE | re.DOTALL)


def quick_start() -> str:
    found = BLOCK.search((ROOT / "README.md").read_text())
    assert found is not None, "the README has no quick start block"
    return found["script"]


def test_the_readme_quick_start_block_is_the_four_steps() -> None:
    commands = [line.split("#")[0].strip() for line in quick_start().splitlines()]
    assert commands == [
        "seqproc migrate",
        "seqproc worker &",
        "seqproc enqueue like 42 1001 --wait 30",
        "seqproc show article 42",
        "kill %1",
    ]


def test_the_readme_quick_start_runs_as_written(clean: Settings, engine: Engine) -> None:
    scripts = str(Path(sys.executable).parent)  # the environment's console scripts, as `make install` leaves them
    env = settings_env(clean, PATH=f"{scripts}:{os.environ.get('PATH', '')}")
    # Stop on the first failing command, and never leave its worker behind (the harness, not the block).
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + quick_start() + "wait\n"
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("migrated postgresql+psycopg://")
    sent = next(line for line in lines if line.startswith("type=like "))
    assert sent.split()[-1] == "outcome=applied"
    assert "like_count  1" in lines
    assert "likes       1" in lines
    with engine.connect() as conn:
        assert article_state(conn, 42)["like_count"] == 1
    assert "worker: Warm shutdown" in done.stdout  # `kill %1`: a graceful stop
