"""A Redis Cluster a test starts for itself: three primaries and three replicas of ``redis-server --cluster-enabled
yes`` on loopback ports, in a temporary folder, joined with ``redis-cli --cluster create --cluster-replicas 1``, and
stopped after.

``cluster-node-timeout`` is 1000 ms: a primary killed is failed over by its replica within a few seconds. The first
sync of each replica without its default 5 s delay (a failover before it would promote an empty replica). Ports:
``SEQPROC_TEST_PORT_BASE`` + ``port_offset`` (six in a row for the nodes, the next six for their cluster buses) when
set, else free ones. Each bus port is given (``cluster-port``): Redis's default, the port + 10000, falls in the
kernel's range of ephemeral ports, where a busy machine's client sockets took it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

from seqproc.producer import publish
from tests.conftest import wait_for
from tests.faults.servers import fault_ports, redis_answers, redis_at, require_binary

#: How long a node may be unreachable before the others fail it over (ms).
NODE_TIMEOUT_MS = 1000
#: Three primaries, each with one replica.
NODES = 6


def cluster_state(port: int) -> str:
    """``cluster_state`` of ``CLUSTER INFO`` on the node on ``port``."""
    return str(redis_at(port).execute_command("CLUSTER INFO")["cluster_state"])


class ClusterGroup:
    """Six nodes: after :meth:`start`, three primaries holding all 16384 slots, each with a replica."""

    def __init__(self, directory: Path, *, port_offset: int = 0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ports = fault_ports(NODES, offset=port_offset)
        #: Each node's cluster bus port, by its port.
        self.bus_ports = dict(zip(self.ports, fault_ports(NODES, offset=port_offset + NODES), strict=True))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        #: Nodes SIGSTOPped (:meth:`signal`): alive, but not asked about the cluster.
        self.stopped: set[int] = set()

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> ClusterGroup:
        require_binary("redis-server")
        require_binary("redis-cli")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for port in self.ports:
            self._node(port)
        for port in self.ports:
            wait_for(lambda port=port: redis_answers(port), 10, f"redis-server on {port}")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.ok, 30, "cluster_state:ok on every node, each primary with a replica")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        forget_publishers(self.url())

    def _node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        log = (node_dir / "redis.log").open("wb")
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(self.bus_ports[port]),
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node_dir),
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    # -- what the tests read ---------------------------------------------------------------------------------------
    def url(self, *, scheme: str = "redis+cluster") -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``: every node as a seed."""
        return f"{scheme}://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def live_ports(self) -> list[int]:
        """The nodes that run and answer (not killed, not stopped)."""
        return [port for port, process in self.processes.items() if process.poll() is None and port not in self.stopped]

    def ok(self) -> bool:
        """Every live node says ``cluster_state:ok`` and counts three primaries, each with a live replica."""
        try:
            for port in self.live_ports():
                if cluster_state(port) != "ok":
                    return False
            return len(self.primaries()) == 3 and all(self.replica_of(port) for port in self.primaries())
        except redis.RedisError:
            return False

    def nodes(self) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as a live node sees it: id, port, flags, primary id, whether it holds slots."""
        parsed = redis_at(self.live_ports()[0]).execute_command("CLUSTER NODES")
        return [
            {
                "id": node["node_id"],
                "port": address.split("@")[0].rsplit(":", 1)[1],
                "flags": node["flags"],
                "primary": node["master_id"],
                "slots": "yes" if node["slots"] else "",
            }
            for address, node in parsed.items()
        ]

    def primaries(self) -> list[int]:
        """The live primaries' ports (as a live node sees the cluster), those holding slots."""
        live = set(self.live_ports())
        return sorted(
            int(node["port"])
            for node in self.nodes()
            if "master" in node["flags"] and "fail" not in node["flags"] and node["slots"] and int(node["port"]) in live
        )

    def replica_of(self, port: int) -> int | None:
        """A live replica of the primary on ``port``."""
        nodes = self.nodes()
        primary_id = next(node["id"] for node in nodes if int(node["port"]) == port)
        live = set(self.live_ports())
        for node in nodes:
            if node["primary"] == primary_id and "fail" not in node["flags"] and int(node["port"]) in live:
                return int(node["port"])
        return None

    def node_id(self, port: int) -> str:
        return str(redis_at(port).execute_command("CLUSTER MYID").decode())

    def primary_of_slot(self, slot: int) -> int:
        """The port of the primary that holds ``slot`` now."""
        for start, end, primary, *_ in redis_at(self.live_ports()[0]).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise AssertionError(f"no node holds slot {slot}")

    def slot_of(self, key: str) -> int:
        return int(redis_at(self.live_ports()[0]).execute_command("CLUSTER KEYSLOT", key))

    def wait_caught_up(self, timeout_s: float = 15) -> None:
        """Until every primary's replica has applied everything its primary wrote."""

        def caught_up() -> bool:
            try:
                for primary in self.primaries():
                    replica = self.replica_of(primary)
                    if replica is None:
                        return False
                    primary_info = redis_at(primary).info("replication")
                    replica_info = redis_at(replica).info("replication")
                    if replica_info.get("master_link_status") != "up" or int(
                        replica_info.get("slave_repl_offset", -1)
                    ) != int(primary_info["master_repl_offset"]):
                        return False
                return True
            except redis.RedisError:
                return False

        wait_for(caught_up, timeout_s, "every replica caught up with its primary")

    # -- faults ----------------------------------------------------------------------------------------------------
    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait(10)

    def signal(self, port: int, sig: signal.Signals) -> None:
        """Send ``sig`` to the node on ``port`` (SIGSTOP: silent, its connections open; SIGCONT: back)."""
        self.processes[port].send_signal(sig)
        if sig == signal.SIGSTOP:
            self.stopped.add(port)
        elif sig == signal.SIGCONT:
            self.stopped.discard(port)

    def cut_replica_link(self, primary: int) -> int:
        """The primary on ``primary`` closes its replicas' connections (``CLIENT KILL TYPE replica``); how many."""
        return int(redis_at(primary).execute_command("CLIENT", "KILL", "TYPE", "replica"))

    def offset(self, primary: int) -> int:
        """The replication offset of the primary on ``primary``: how far its writes went."""
        return int(redis_at(primary).info("replication")["master_repl_offset"])

    def promoted_lag_bytes(self, slot: int, killed_offset: int) -> int:
        """After a failover: how many bytes of the old primary's writes (its offset ``killed_offset`` when it died)
        the replica promoted to serve ``slot`` never got, read from its ``second_repl_offset`` (where its copy of the
        old primary's history ends, plus one). 0: it had every write."""
        had = int(redis_at(self.primary_of_slot(slot)).info("replication")["second_repl_offset"]) - 1
        return max(0, killed_offset - had)

    def kill_primary_past_its_replica(
        self,
        slot: int,
        *,
        behind_s: float,
        paused: Sequence[subprocess.Popen[str] | subprocess.Popen[bytes]] = (),
        before_kill: Callable[[], object] | None = None,
    ) -> tuple[int, float, int]:
        """The replica of the primary holding ``slot`` SIGSTOPped (and ``paused``, other processes) and its link cut
        every 0.2 s (``CLIENT KILL TYPE replica``) for ``behind_s``, ``before_kill`` called, the primary SIGKILLed,
        everything resumed; then the cluster promotes that replica, which lacks the primary's last writes. Returns
        the old primary, how long the promotion took and how many bytes of its writes the promoted replica lacks."""
        primary = self.primary_of_slot(slot)
        replica = self.replica_of(primary)
        assert replica is not None
        for process in paused:
            process.send_signal(signal.SIGSTOP)
        self.signal(replica, signal.SIGSTOP)
        try:
            ends = time.monotonic() + behind_s
            while time.monotonic() < ends:
                self.cut_replica_link(primary)
                time.sleep(0.2)
            if before_kill is not None:
                before_kill()
            killed_offset = self.offset(primary)
            self.kill(primary)
        finally:
            self.signal(replica, signal.SIGCONT)
            for process in paused:
                process.send_signal(signal.SIGCONT)
        took_s = self.wait_promoted(primary, slot)
        return primary, took_s, self.promoted_lag_bytes(slot, killed_offset)

    def restart(self, port: int, timeout_s: float = 30) -> None:
        """Start the node on ``port`` again (killed before) and wait until it rejoined: with its ``nodes.conf`` it
        comes back as a replica of the primary that took its slots, and every primary has a replica again."""
        self._node(port)
        wait_for(lambda: redis_answers(port), 10, f"redis-server on {port} again")
        wait_for(self.ok, timeout_s, "the cluster whole again, each primary with a replica")

    def flush(self) -> None:
        """Every key of every primary deleted (a clean namespace for the next test on the same cluster)."""
        for port in self.primaries():
            redis_at(port).flushall()

    def wait_promoted(self, old_port: int, slot: int, timeout_s: float = 20) -> float:
        """Until another node serves ``slot`` as a primary (the killed one's replica, promoted) and the cluster is
        ok; returns how long it took."""
        started = time.monotonic()

        def promoted() -> bool:
            try:
                port = self.primary_of_slot(slot)
                if port == old_port:
                    return False
                return all(cluster_state(p) == "ok" for p in self.live_ports())
            except redis.RedisError:
                return False

        wait_for(promoted, timeout_s, f"a replica promoted to serve slot {slot}")
        return time.monotonic() - started

    @contextmanager
    def migrating(self, slot: int) -> Iterator[int]:
        """``slot`` marked ``MIGRATING`` on its primary and ``IMPORTING`` on another, no key moved (a resharding
        as it starts); yields the source's port; ``STABLE`` on both after (the source's again, whole)."""
        source = self.primary_of_slot(slot)
        target = next(port for port in self.primaries() if port != source)
        redis_at(target).execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        redis_at(source).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(target))
        try:
            yield source
        finally:
            for port in (source, target):
                redis_at(port).execute_command("CLUSTER SETSLOT", slot, "STABLE")

    def migrate_slot(self, slot: int, target_port: int, *, batch: int = 10, pause_s: float = 0.0) -> int:
        """Move ``slot`` to the primary on ``target_port`` the way ``redis-cli --cluster reshard`` does: IMPORTING on
        the target, MIGRATING on the source, ``MIGRATE`` its keys a batch at a time (``pause_s`` after each: a slow
        reshard, whose clients meet the slot half moved), then ``SETSLOT NODE`` on both (and the others). Returns how
        many keys moved."""
        source_port = self.primary_of_slot(slot)
        if source_port == target_port:
            return 0
        source, target = redis_at(source_port), redis_at(target_port)
        source_id, target_id = self.node_id(source_port), self.node_id(target_port)
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            keys = source.execute_command("CLUSTER GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        for port in self.primaries():
            redis_at(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved


def forget_publishers(broker_url: str) -> None:
    """Drop this process's publishers of ``broker_url`` and stop their mark keepers, once its cluster is gone. A
    keeper left running asks the dead cluster's primaries every second for as long as the test process lives (redis-py
    logs each failed topology refresh at ERROR, into later tests' logs); with fixed ports
    (``SEQPROC_TEST_PORT_BASE``) the next test's cluster has the same URL, so equal settings would find this test's
    publisher: its numbering would go on past what the next test's fresh database expects (a gap from 1), and its
    keeper, knowing this cluster's primaries, would mark the next one's as a failover."""
    for settings, publisher in list(publish._PUBLISHERS.items()):
        if settings.broker_url == broker_url:
            if publisher.marks is not None:
                publisher.marks.close()
            del publish._PUBLISHERS[settings]
    publish._last = None
