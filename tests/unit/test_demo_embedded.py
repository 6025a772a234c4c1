"""`seqproc demo` without reachable services runs on the embedded default and says so in one line."""

from __future__ import annotations

import os
import re
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
        [sys.executable, "-m", "seqproc", "demo", "--threads", "2", "--events", "60"],
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


#: Runs the demo (embedded) in a child process, on a terminal console it can read. The sender that sends the 40th like
#: is held until the "sent" bar shows a count part-way: were progress shown only after sending, it would wait in vain.
WATCH_SENDING = """
import io, os, re, sys, threading, time
from rich.console import Console
from seqproc import producer
from seqproc.worker.cli.demo import run_demo

out = io.StringIO()
console = Console(file=out, force_terminal=True, color_system=None, width=120)
like, calls, lock = producer.like, [0], threading.Lock()
ANSI = re.compile(r"\\x1b\\[[0-9;?]*[A-Za-z]")
SENT = re.compile(r"^sent +\\S+ +(\\d+)/(\\d+)", re.MULTILINE)


def shown_part_way():
    text = ANSI.sub("", out.getvalue()).replace("\\r", "\\n")
    return any(0 < int(m[1]) < int(m[2]) for m in SENT.finditer(text))


def held_like(*args, **kwargs):
    with lock:
        calls[0] += 1
        n = calls[0]
    if n == 40:
        deadline = time.monotonic() + 30
        while not shown_part_way():
            if time.monotonic() > deadline:
                raise AssertionError("no progress shown while sending")
            time.sleep(0.01)
        os.write(2, b"SHOWN PART-WAY\\n")  # not print(): the live display captures sys.stderr
    return like(*args, **kwargs)


producer.like = held_like
ok = run_demo(threads=2, events_per_thread=60, workers=1, force_embedded=True, console=console)
sys.stdout.write(ANSI.sub("", out.getvalue()).replace("\\r", "\\n"))
sys.exit(0 if ok else 1)
"""


def _last(pattern: str, text: str) -> tuple[int, int]:
    found = re.findall(pattern, text, re.MULTILINE)
    assert found, f"no {pattern!r} in:\n{text[-3000:]}"
    done, total = found[-1]
    return int(done), int(total)


def test_demo_shows_progress_while_it_sends() -> None:
    run = subprocess.run([sys.executable, "-c", WATCH_SENDING], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "SHOWN PART-WAY" in run.stderr
    # The bars end full, on the number of events the table reports.
    reported = re.search(r"events sent\D+([\d,]+)", run.stdout)
    assert reported, run.stdout[-3000:]
    sent = int(reported[1].replace(",", ""))
    assert _last(r"^sent +\S+ +(\d+)/(\d+)", run.stdout) == (sent, sent)
    assert _last(r"^outcomes +\S+ +(\d+)/(\d+)", run.stdout) == (sent, sent)
    assert "every invariant held" in run.stdout
