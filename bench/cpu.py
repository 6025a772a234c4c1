"""CPU per single-event call and per one-event message: ``seqproc bench --cpu N``.

- **Producer**: one thread calls ``seqproc.like`` N times one after another (each call one event, one message: the
  prefork web server's case); CPU is ``time.process_time()`` of this process over those calls, divided by N.
- **Worker**: one worker process starts and is paused (SIGSTOP) once ready; the N one-event messages are queued;
  its CPU (user + system, from ``/proc/<pid>/stat``) is read, it is resumed (SIGCONT), and read again once it has
  applied all of them: the difference divided by N. Start-up is left out; the commits, outcomes and acks are in.
- **The batched ceiling**: the same N likes queued again while the worker is paused, this time in messages of
  ``BATCHED_EVENTS_PER_MESSAGE`` (as the threaded producer or the relay send them): the events/s and the CPU per event
  of one worker draining them, i.e. what one hot row can take through one worker on this machine.
- **Redis**: the server's own CPU (``INFO cpu``) over the sending and over the draining, per message; on a Redis
  Cluster (``redis+cluster://`` URLs) that of each primary, and their sum. One hot article: its queue's work is on
  the primary of its slot; outcomes (keyed by event) spread over every primary.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from seqproc import producer
from seqproc.models.clients import redis_client
from seqproc.models.settings import Settings
from seqproc.models.wire import is_cluster_url
from seqproc.producer.publish import publisher_for
from seqproc.worker.processes import WorkerGroup, split_partitions

from .harness import harness_engine, process_cpu_s
from .seqproc_strategy import DATA_TABLES

#: One hot article: every event on one partition, as in the prefork benchmark.
ARTICLE = 1
#: Events per message in the batched phase: about what 32 producer threads' calls share, or the relay sends.
BATCHED_EVENTS_PER_MESSAGE = 100


def calibration_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop, measured in the same run: this shared machine's speed moves by
    2x from hour to hour, so the figures above mean most beside this one."""
    started = time.process_time()
    total = 0
    for n in range(3_000_000):
        total += n * n
    return round((time.process_time() - started) * 1000, 1)


def redis_cpu_s(client: redis.Redis) -> float:
    """The Redis server's CPU seconds so far (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def broker_servers(url: str) -> dict[str, redis.Redis]:
    """The Redis servers behind ``url`` by name: the one server, or each primary of a cluster."""
    if not is_cluster_url(url):
        return {"redis": redis.Redis.from_url(url)}
    cluster: Any = redis_client(url)
    return {node.name: cluster.get_redis_connection(node) for node in cluster.get_primaries()}


def servers_cpu_s(servers: dict[str, redis.Redis]) -> dict[str, float]:
    return {name: redis_cpu_s(client) for name, client in servers.items()}


def empty(url: str) -> None:
    """FLUSHDB on the server, or on every primary of the cluster."""
    for client in broker_servers(url).values():
        client.flushdb()


def measure(settings: Settings, calls: int) -> dict[str, Any]:
    engine = harness_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {DATA_TABLES}"))
    for url in (settings.broker_url, settings.result_backend):
        empty(url)
    producer.configure(settings)
    publisher = publisher_for(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="seqproc-cpu-") as directory:
            group = WorkerGroup(settings, split_partitions(settings.partitions, 1), Path(directory))
            try:
                group.wait_ready()
                pid = group.pids[0]
                producer.like(ARTICLE, 10**9).wait(timeout_s=30)  # both ends connected and warm
                os.kill(pid, signal.SIGSTOP)  # the messages wait in the queue: the worker drains a backlog
                publisher.sent_messages = publisher.sent_events = 0
                servers = broker_servers(settings.broker_url)
                redis_before = servers_cpu_s(servers)
                started_cpu, started_wall = time.process_time(), time.perf_counter()
                receipts = [producer.like(ARTICLE, user) for user in range(1, calls + 1)]
                producer_cpu_s = time.process_time() - started_cpu
                producer_wall_s = time.perf_counter() - started_wall
                messages = publisher.sent_messages
                redis_sent = servers_cpu_s(servers)
                before = process_cpu_s(pid)
                drain_started = time.perf_counter()
                os.kill(pid, signal.SIGCONT)
                producer.wait_all(receipts, timeout_s=600)
                worker_cpu_s = process_cpu_s(pid) - before
                drain_s = time.perf_counter() - drain_started
                redis_drained = servers_cpu_s(servers)
                batched_cpu_s, batched_s = _drain_batched(pid, calls)
            finally:
                os.kill(group.pids[0], signal.SIGCONT)
                group.stop()
    finally:
        producer.configure(None)
        engine.dispose()
    per_message = max(1, messages)

    def us_per_message(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
        return {name: round((end[name] - start[name]) / per_message * 1e6, 1) for name in servers}

    sent_by_server = us_per_message(redis_before, redis_sent)
    drained_by_server = us_per_message(redis_sent, redis_drained)
    by_primary = (
        {
            "redis_primaries": len(servers),
            "redis_cpu_us_per_message_by_primary": {
                name: {"sent": sent_by_server[name], "drained": drained_by_server[name]} for name in sorted(servers)
            },
        }
        if is_cluster_url(settings.broker_url)
        else {}
    )
    return {
        "calls": calls,
        "messages": messages,
        "producer_cpu_us_per_call": round(producer_cpu_s / calls * 1e6, 1),
        "producer_calls_per_s": round(calls / producer_wall_s, 1),
        "worker_cpu_us_per_message": round(worker_cpu_s / max(1, messages) * 1e6, 1),
        "worker_messages_per_s": round(messages / drain_s, 1),
        # The Redis server's own CPU (INFO cpu; broker and results on one server here, or on one cluster: the sum of
        # its primaries) per message: pushed, then fetched, acked and its outcome stored.
        "redis_cpu_us_per_message_sent": round(sum(sent_by_server.values()), 1),
        "redis_cpu_us_per_message_drained": round(sum(drained_by_server.values()), 1),
        **by_primary,
        "worker_cpu_us_per_event_batched": round(batched_cpu_s / calls * 1e6, 1),
        "worker_events_per_s_batched": round(calls / batched_s, 1),
        "events_per_message_batched": BATCHED_EVENTS_PER_MESSAGE,
        "command": f"seqproc bench --cpu {calls}",
        "calibration_ms": calibration_ms(),
    }


def _drain_batched(pid: int, calls: int) -> tuple[float, float]:
    """Pause the worker, queue ``calls`` more likes (new users, so each is applied) in messages of
    ``BATCHED_EVENTS_PER_MESSAGE``, resume it: its CPU seconds and the seconds it took to apply them all."""
    os.kill(pid, signal.SIGSTOP)
    receipts = []
    first_user = calls + 1
    for start in range(first_user, first_user + calls, BATCHED_EVENTS_PER_MESSAGE):
        users = range(start, min(start + BATCHED_EVENTS_PER_MESSAGE, first_user + calls))
        receipts += producer.send_many([{"type": "like", "article_id": ARTICLE, "user_id": u} for u in users])
    before = process_cpu_s(pid)
    started = time.perf_counter()
    os.kill(pid, signal.SIGCONT)
    outcomes = producer.wait_all(receipts, timeout_s=600)
    cpu_s, wall_s = process_cpu_s(pid) - before, time.perf_counter() - started
    applied = sum(1 for outcome in outcomes if outcome.status == "applied")
    if applied != calls:
        raise RuntimeError(f"batched phase: {applied} of {calls} likes applied")
    return cpu_s, wall_s
