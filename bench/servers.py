"""The web servers of ``seqproc bench --server``: gunicorn (sync workers, the app preloaded, connected in
``post_fork``) and uvicorn (its worker processes, FastAPI connected in the lifespan), serving the applications in
``bench/web/`` on 127.0.0.1 at a free port.

A server runs in a session of its own: stopping it (SIGTERM, a graceful stop that lets requests in flight finish),
and killing what is left of its process group if it overstays, reaches every process it started, by its id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from seqproc.models.errors import SeqprocError
from seqproc.models.settings import Settings
from seqproc.worker.processes import settings_env

from .harness import process_cpu_s

#: The applications' folder. The servers import them from it by their own names, and so does this module (they
#: import nothing of bench/, and their names, seqproc_bench_*, are taken by nothing else; appended: shadows nothing).
WEB_DIR = Path(__file__).resolve().parent / "web"
if str(WEB_DIR) not in sys.path:
    sys.path.append(str(WEB_DIR))

from seqproc_bench_app import COUNTS_DIR_ENV, read_counts, ready_processes  # noqa: E402
from seqproc_bench_app import FLOOR_KEY as FLOOR_KEY  # noqa: E402 (the floor's list, for server_run)

SERVERS = ("gunicorn", "uvicorn")
#: ``--server-workers`` by default: gunicorn's sync workers handle one request each at a time, uvicorn's many.
DEFAULT_SERVER_WORKERS = {"gunicorn": 16, "uvicorn": 2}
#: Longest a server may take to start every worker and connect them (16 preloaded workers on a busy 2-core box).
START_TIMEOUT_S = 120
#: How long requests in flight get to finish once the server is told to stop.
GRACEFUL_TIMEOUT_S = 10


class ServerError(SeqprocError):
    """The server did not start, or failed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(server: str, *, workers: int, port: int) -> list[str]:
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(WEB_DIR / "seqproc_bench_gunicorn.py"),
            "--pythonpath",
            str(WEB_DIR),
            "--preload",
            "--worker-class",
            "sync",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            str(GRACEFUL_TIMEOUT_S),
            "--log-level",
            "warning",
            "--no-control-socket",
            "seqproc_bench_wsgi:app",
        ]
    if server == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(WEB_DIR),
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout-graceful-shutdown",
            str(GRACEFUL_TIMEOUT_S),
            "--log-level",
            "warning",
            "--no-access-log",
            "seqproc_bench_asgi:app",
        ]
    raise ValueError(f"server must be one of {', '.join(SERVERS)} (got {server!r})")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


class ServerProcess:
    """One server: started, waited for, measured, stopped; its accepted requests counted by its processes."""

    def __init__(self, server: str, settings: Settings, *, workers: int, directory: Path) -> None:
        self.server = server
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.counts_dir = directory / f"{server}-counts"
        self.counts_dir.mkdir()
        self.log_path = directory / f"{server}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                server_command(server, workers=workers, port=self.port),
                env=settings_env(settings, **{COUNTS_DIR_ENV: str(self.counts_dir)}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Every worker process connected, and the port accepting connections."""
        deadline = time.monotonic() + timeout_s
        while ready_processes(self.counts_dir) < self.workers or not self._listening():
            if self.process.poll() is not None:
                raise ServerError(f"{self.server} exited with {self.process.returncode} at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.server}: {ready_processes(self.counts_dir)} of {self.workers} workers connected after "
                    f"{timeout_s} s: {self.log_tail()}"
                )
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def cpu_s(self) -> float:
        """CPU seconds so far of the server's processes (the master or parent and its workers)."""
        total = 0.0
        for pid in process_tree(self.process.pid):
            with contextlib.suppress(OSError):  # exited meanwhile
                total += process_cpu_s(pid)
        return total

    def counts(self) -> tuple[int, int, int]:
        """Accepted requests, messages and events its processes sent (final once it has stopped)."""
        counts: tuple[int, int, int] = read_counts(self.counts_dir)
        return counts

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] or "(no output)"

    def stop(self, timeout_s: float = GRACEFUL_TIMEOUT_S + 20) -> None:
        """A graceful stop (requests in flight finish); then its whole process group killed if it overstays."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its session's leftovers: workers that outlived it
        if self.process.poll() is None:
            self.process.wait(10)
        # A SIGKILLed leftover is gone only once it has exited and been reaped: until then it still holds its memory
        # and its sockets (and a caller that looks for the server's processes finds it). Wait for the group to empty.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
