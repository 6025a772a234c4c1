"""wrk, the HTTP load generator of ``seqproc bench --server``: found, started on one endpoint, and its figures read.

wrk runs its Lua script (``wrk_hot_likes.lua``): every request a new user liking one article, and at the end one JSON
line of wrk's own counts and latency distribution (HdrHistogram-like, in microseconds), which :func:`finish` parses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqproc.models.errors import ConfigError

#: The script every run uses (beside this module).
SCRIPT = Path(__file__).resolve().parent / "wrk_hot_likes.lua"
#: How the script's ``done`` marks its JSON line in wrk's output.
MARKER = "SEQPROC_WRK "
#: wrk counts a response slower than this as a timeout and leaves it out of the latency distribution: long enough
#: that the distribution is whole under this benchmark's loads (wrk allocates a slot per microsecond up to it).
TIMEOUT_S = 10
#: How to get wrk, printed when it is missing.
INSTALL_HINT = "apt-get install -y wrk (Debian/Ubuntu; as root), brew install wrk (macOS)"


class WrkError(ConfigError):
    """wrk is missing, or did not run to the end."""


def find_wrk() -> str:
    """wrk's path, or :class:`WrkError` saying how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(f"seqproc bench --server needs wrk, the HTTP load generator, on PATH: {INSTALL_HINT}")
    return path


@dataclass(frozen=True)
class WrkResult:
    #: Responses wrk read to the end (any status).
    requests: int
    #: Of those, statuses above 399.
    non_2xx: int
    duration_s: float
    #: Socket errors: connect, read, write; and responses slower than ``TIMEOUT_S`` (``timeout``).
    errors: dict[str, int]
    latency_ms: dict[str, float]
    #: wrk's own CPU seconds (user + system), from its resource usage once it exited.
    cpu_s: float

    @property
    def responses_2xx(self) -> int:
        return self.requests - self.non_2xx

    @property
    def requests_per_s(self) -> float:
        """2xx responses per second of wrk's run."""
        return self.responses_2xx / self.duration_s if self.duration_s else 0.0


def command(url: str, *, threads: int, connections: int, duration_s: int, article: int) -> list[str]:
    return [
        find_wrk(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        f"--timeout={TIMEOUT_S}s",
        f"--script={SCRIPT}",
        url,
        "--",
        str(article),
    ]


def start(url: str, *, threads: int, connections: int, duration_s: int, article: int) -> subprocess.Popen[str]:
    """wrk, running against ``url``; in a session of its own, so that stopping the benchmark stops it by its id."""
    argv = command(url, threads=threads, connections=connections, duration_s=duration_s, article=article)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen[str]) -> WrkResult:
    """Wait for wrk to exit; its figures. :class:`WrkError` with its output if it failed."""
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # its resource usage: wrk takes a share of the cores too
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise WrkError(f"wrk exited with {process.returncode}: {output.strip()[-2000:]}")
    return parse(output, cpu_s=usage.ru_utime + usage.ru_stime)


def parse(output: str, *, cpu_s: float) -> WrkResult:
    lines = [line for line in output.splitlines() if line.startswith(MARKER)]
    if not lines:
        raise WrkError(f"wrk printed no {MARKER.strip()} line (was its script {SCRIPT} used?): {output[-2000:]}")
    data: dict[str, Any] = json.loads(lines[-1][len(MARKER) :])
    errors = {k: int(v) for k, v in data["errors"].items()}
    return WrkResult(
        requests=int(data["requests"]),
        non_2xx=errors.pop("status"),
        duration_s=data["duration_us"] / 1e6,
        errors=errors,
        latency_ms={k: round(v / 1000, 3) for k, v in data["latency_us"].items()},
        cpu_s=cpu_s,
    )


def stop(process: subprocess.Popen[str]) -> None:
    """Stop a wrk that is still running (the benchmark failed or was interrupted)."""
    if process.returncode is None and process.poll() is None:
        process.kill()
        process.wait(10)
