"""Running groups of ``seqproc worker`` processes from Python: the demo and the benchmark use it.

Each process gets the settings through its environment, writes a ready file once it consumes, and is stopped with
SIGTERM (a warm shutdown: it applies and acks the batch in hand) and killed only if it overstays.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from seqproc.models.settings import Settings


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process use ``settings``."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list | tuple):
            value = ",".join(map(str, value))  # how list settings are read back (SEQPROC_LOCK_URLS)
        env[f"SEQPROC_{name.upper()}"] = str(value)
    env.update(extra)
    return env


def split_partitions(total: int, count: int) -> list[str]:
    """``count`` contiguous ranges covering ``0..total-1``: (16, 2) -> ["0-7", "8-15"]."""
    count = max(1, min(count, total))
    bounds = [round(i * total / count) for i in range(count + 1)]
    return [f"{low}-{high - 1}" if high - 1 > low else f"{low}" for low, high in itertools.pairwise(bounds)]


class WorkerGroup:
    def __init__(self, settings: Settings, specs: list[str], directory: Path, *, loglevel: str = "WARNING", **env: str):
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ready_files: list[Path] = []
        self.log_path = directory / "workers.log"
        self._log = self.log_path.open("ab")
        for n, spec in enumerate(specs):
            ready = directory / f"worker-{n}.ready"
            ready.unlink(missing_ok=True)
            self.ready_files.append(ready)
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "seqproc",
                        "worker",
                        "--partitions",
                        spec,
                        "--loglevel",
                        loglevel,
                        "--hostname",
                        f"seqproc-{n}-{os.getpid()}@%h",
                        "--ready-file",
                        str(ready),
                    ],
                    env=settings_env(settings, **env),
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                )
            )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(f.exists() for f in self.ready_files):
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a worker exited with {dead[0].returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout_s} s; see {self.log_path}")
            time.sleep(0.05)

    def rss_mb(self) -> list[float]:
        """Resident memory of each worker process, from /proc."""
        sizes = []
        for pid in self.pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes.append(int(line.split()[1]) / 1024)
            except OSError:
                sizes.append(0.0)
        return sizes

    def stop(self, timeout_s: float = 30) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self._log.close()
