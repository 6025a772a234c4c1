"""Replicated servers a fault test starts for itself, on loopback ports, in its temporary folder, and stops.

``SentinelGroup``: a Redis primary, one replica and three sentinels (``down-after-milliseconds`` 1000, failover
timeout 5000, the first sync without its default 5 s delay), as docs/guarantees.md's failover figures were measured.
Ports: ``SEQPROC_TEST_PORT_BASE`` (five in a row from it; a shared machine gives each run its own range), else free
ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

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


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1, retry=None)


class SentinelGroup:
    """A primary, a replica and three sentinels watching them as ``MASTER``."""

    def __init__(self, directory: Path, *, port_offset: int = 0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        ports = fault_ports(5, offset=port_offset)
        self.data_ports, self.sentinel_ports = ports[:2], ports[2:]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

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
        wait_for(lambda: self._answers(port), 10, f"redis-server on {port}")

    def _spawn(self, port: int, *args: str) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{port}.log").open("wb")
        return subprocess.Popen(["redis-server", *args], stdout=log, stderr=subprocess.STDOUT)

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            return bool(_client(port).ping())
        except redis.RedisError:
            return False

    def _watching(self) -> bool:
        try:
            for port in self.sentinel_ports:
                state = _client(port).sentinel_master(MASTER)
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
                address = _client(port).sentinel_get_master_addr_by_name(MASTER)
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
                primary_info = _client(master).info("replication")
                replica_info = _client(replica).info("replication")
            except redis.RedisError:
                return False
            return replica_info.get("master_link_status") == "up" and int(
                replica_info.get("slave_repl_offset", -1)
            ) == int(primary_info["master_repl_offset"])

        wait_for(caught_up, timeout_s, "the replica to catch up with the primary")

    def kill_master(self) -> int:
        """SIGKILL the current master; returns its port. The group then has no replica until a test restarts it."""
        port = self.master_port()
        assert port is not None
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(10)
        return port

    def signal_replica(self, signum: int) -> None:
        """SIGSTOP the replica (it falls behind: the master goes on taking writes), SIGCONT it."""
        self.processes[self.replica_port()].send_signal(signum)

    def wait_failover(self, old_port: int, timeout_s: float = 20) -> float:
        """Until the sentinels name another master that answers as one; returns how long it took."""
        started = time.monotonic()

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            try:
                return bool(_client(port).info("replication")["role"] == "master")
            except redis.RedisError:
                return False

        wait_for(promoted, timeout_s, "a replica promoted by the sentinels")
        return time.monotonic() - started
