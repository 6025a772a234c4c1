"""Replicated servers a fault test starts for itself, on loopback ports, in temporary folders, and stops.

``SentinelGroup``: a Redis primary, one replica and three sentinels (``down-after-milliseconds`` 1000, failover
timeout 5000, the first sync without its default 5 s delay), as docs/guarantees.md's failover figures were measured.
``PostgresPair``: a PostgreSQL primary and its synchronous standby (``initdb``, ``pg_basebackup -R``).
Ports: ``SEQPROC_TEST_PORT_BASE`` (Redis and sentinels, five in a row) and ``SEQPROC_TEST_PG_PORT_BASE`` (two) when set
(a shared machine gives each run its own range), else free ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import free_port, wait_for

MASTER = "seqproc"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def fault_ports(count: int, *, offset: int = 0, variable: str = "SEQPROC_TEST_PORT_BASE") -> list[int]:
    """``count`` ports: from ``variable`` (+ ``offset``) if set, else free ones. ``SEQPROC_TEST_PORT_BASE``: servers
    (Redis, sentinels, PostgreSQL); ``SEQPROC_TEST_PROXY_PORT_BASE``: fault proxies."""
    base = os.environ.get(variable)
    if base:
        return [int(base) + offset + i for i in range(count)]
    return [free_port() for _ in range(count)]


def require_binary(name: str) -> None:
    if shutil.which(name) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed and CI is set (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")


def redis_at(port: int) -> redis.Redis:
    """A client of the server on ``port`` (a data server or a sentinel), with short timeouts and no retries."""
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1, retry=None)


def redis_answers(port: int) -> bool:
    """Whether a Redis on ``port`` (loopback) answers a PING."""
    try:
        return bool(redis_at(port).ping())
    except redis.RedisError:
        return False


class SentinelGroup:
    """A primary, a replica and three sentinels watching them as ``MASTER``."""

    def __init__(self, directory: Path, *, port_offset: int = 0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        ports = fault_ports(5, offset=port_offset)
        self.data_ports, self.sentinel_ports = ports[:2], ports[2:]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        #: The master's replication offset when :meth:`kill_master` killed it.
        self.killed_offset = 0

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> SentinelGroup:
        require_binary("redis-server")
        primary, replica = self.data_ports
        self._data_server(primary)
        self._data_server(replica, "--replicaof", "127.0.0.1", str(primary))
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.processes[port] = self._spawn(port, str(conf), "--sentinel")
        wait_for(self._watching, 20, "three sentinels that see the primary, its replica and each other")
        self.wait_caught_up()
        return self

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)

    def _data_server(self, port: int, *extra: str) -> None:
        self.processes[port] = self._spawn(
            port,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--dbfilename",
            f"dump-{port}.rdb",
            # The first full sync at once: a failover before it completed would promote an empty replica.
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            *extra,
        )
        wait_for(lambda: redis_answers(port), 10, f"redis-server on {port}")

    def _spawn(self, port: int, *args: str) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{port}.log").open("wb")
        return subprocess.Popen(["redis-server", *args], stdout=log, stderr=subprocess.STDOUT)

    def _watching(self) -> bool:
        try:
            for port in self.sentinel_ports:
                state = redis_at(port).sentinel_master(MASTER)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
            return True
        except redis.RedisError:
            return False

    # -- what the tests read ---------------------------------------------------------------------------------------
    def url(self, db: int) -> str:
        """kombu's form: ``sentinel://127.0.0.1:p1;sentinel://127.0.0.1:p2;sentinel://127.0.0.1:p3/db``."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + f"/{db}"

    def master_port(self) -> int | None:
        """The master's port as the sentinels name it now (None while none does)."""
        for port in self.sentinel_ports:
            try:
                address = redis_at(port).sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def replica_port(self) -> int:
        master = self.master_port()
        return next(port for port in self.data_ports if port != master)

    def wait_caught_up(self, timeout_s: float = 15) -> None:
        """Until the replica's link is up and it has applied everything the master wrote."""
        master = self.master_port()
        assert master is not None
        replica = self.replica_port()

        def caught_up() -> bool:
            try:
                primary_info = redis_at(master).info("replication")
                replica_info = redis_at(replica).info("replication")
            except redis.RedisError:
                return False
            return replica_info.get("master_link_status") == "up" and int(
                replica_info.get("slave_repl_offset", -1)
            ) == int(primary_info["master_repl_offset"])

        wait_for(caught_up, timeout_s, "the replica to catch up with the primary")

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port. The group then has no replica until a test restarts it.
        Its replication offset just before the kill is kept (:meth:`promoted_lag_bytes`)."""
        port = self.master_port()
        assert port is not None
        self.killed_offset = int(redis_at(port).info("replication")["master_repl_offset"])
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(10)
        return port

    def signal_master(self, signum: int) -> int:
        """SIGSTOP the current master (by the sentinels' word), say; returns its port."""
        port = self.master_port()
        assert port is not None
        self.signal_master_port(port, signum)
        return port

    def signal_master_port(self, port: int, signum: int) -> None:
        self.processes[port].send_signal(signum)

    def wait_demoted(self, port: int, timeout_s: float = 30) -> None:
        """Until the server on ``port`` (an old master back from a pause) answers as a replica."""

        def replica() -> bool:
            try:
                return bool(redis_at(port).info("replication")["role"] == "slave")
            except redis.RedisError:
                return False

        wait_for(replica, timeout_s, f"the old master on {port} demoted by the sentinels")

    def signal_replica(self, signum: int) -> None:
        """SIGSTOP the replica (it falls behind: the master goes on taking writes), SIGCONT it."""
        self.processes[self.replica_port()].send_signal(signum)

    def cut_replica_link(self) -> int:
        """The master closes its replicas' connections (``CLIENT KILL TYPE replica``); returns how many."""
        port = self.master_port()
        assert port is not None
        return int(redis_at(port).execute_command("CLIENT", "KILL", "TYPE", "replica"))

    def promoted_lag_bytes(self) -> int:
        """After a failover that followed :meth:`kill_master`: how many bytes of the old master's replication stream
        (its writes) the promoted replica never got, read from its ``second_repl_offset`` (where its copy of the
        old master's history ends, plus one). 0: it had every write the old master took before the kill."""
        port = self.master_port()
        assert port is not None
        had = int(redis_at(port).info("replication")["second_repl_offset"]) - 1
        return max(0, self.killed_offset - had)

    def wait_failover(self, old_port: int, timeout_s: float = 20) -> float:
        """Until the sentinels name another master that answers as one; returns how long it took."""
        started = time.monotonic()

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            try:
                return bool(redis_at(port).info("replication")["role"] == "master")
            except redis.RedisError:
                return False

        wait_for(promoted, timeout_s, "a replica promoted by the sentinels")
        return time.monotonic() - started


PG_BIN = Path("/usr/lib/postgresql")


def pg_binary(name: str) -> str:
    """A PostgreSQL server binary (``initdb``, ``pg_ctl``...): on the PATH, or Debian's newest version folder."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(PG_BIN.glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for folder in reversed(versions):
        if (folder / name).exists():
            return str(folder / name)
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed and CI is set")
    pytest.skip(f"{name} is not installed")
    raise AssertionError  # unreachable: skip raises


class PostgresPair:
    """A PostgreSQL primary and its synchronous standby (``pg_basebackup -R``), on loopback ports of the test's own,
    in a temporary folder owned by the ``postgres`` user (the servers refuse to run as root)."""

    def __init__(self, *, port_offset: int = 0) -> None:
        self.ports = fault_ports(2, offset=port_offset, variable="SEQPROC_TEST_PG_PORT_BASE")
        self.directory = Path(tempfile.mkdtemp(prefix="seqproc-pg-"))
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the postgres user then
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = [self.directory / "primary", self.directory / "standby"]
        self.processes: list[subprocess.Popen[bytes] | None] = [None, None]

    @staticmethod
    def _user(args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(self._user(list(args)), check=True, capture_output=True, timeout=60)

    def _start(self, n: int) -> None:
        log = (self.directory / f"server-{n}.log").open("wb")
        self.processes[n] = subprocess.Popen(
            self._user([pg_binary("postgres"), "-D", str(self.data[n])]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self._answers(self.ports[n]), 30, f"PostgreSQL on {self.ports[n]}")

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def start(self) -> PostgresPair:
        self._as_postgres(pg_binary("initdb"), "-D", str(self.data[0]), "--auth=trust", "-U", "postgres")
        with (self.data[0] / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.ports[0]}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n"
                # Synchronous: a commit returns once the standby has it (a worker acks after its commit).
                "synchronous_commit = on\nsynchronous_standby_names = '*'\nfsync = off\n"
            )
        self._start(0)
        self._as_postgres(
            pg_binary("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres",
            "-D", str(self.data[1]), "-R", "-X", "stream",
        )  # fmt: skip
        with (self.data[1] / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.ports[1]}\n")
        self._start(1)
        wait_for(self._synchronous, 30, "the standby to stream synchronously")
        return self

    def _synchronous(self) -> bool:
        with psycopg.connect(host="127.0.0.1", port=self.ports[0], user="postgres", dbname="postgres") as conn:
            row = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchone()
        return row is not None and row[0] == "sync"

    def url(self, database: str) -> str:
        """A multi-host URL: the primary first, then the standby; only a read-write server is taken."""
        hosts = "&".join(f"host=127.0.0.1:{port}" for port in self.ports)
        return f"postgresql+psycopg://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def kill_primary(self) -> None:
        process = self.processes[0]
        assert process is not None
        pid = int((self.data[0] / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        process.wait(10)

    def promote(self) -> float:
        """Promote the standby; returns how long it took. It inherited ``synchronous_standby_names`` from the
        primary and has no standby of its own: until one joins, each commit would wait for it for ever, so it is
        cleared (what an operator does after a failover with no second standby; with one, point it there)."""
        started = time.monotonic()
        self._as_postgres(pg_binary("pg_ctl"), "promote", "-w", "-D", str(self.data[1]))
        with psycopg.connect(host="127.0.0.1", port=self.ports[1], user="postgres", dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute("ALTER SYSTEM SET synchronous_standby_names TO ''")
            conn.execute("SELECT pg_reload_conf()")
        return time.monotonic() - started

    def stop(self) -> None:
        for n, process in enumerate(self.processes):
            if process is not None and process.poll() is None:
                pid_file = self.data[n] / "postmaster.pid"
                if pid_file.exists():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
