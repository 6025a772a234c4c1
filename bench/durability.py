"""What each ``SEQPROC_PUBLISH_DURABILITY`` costs a producer: ``seqproc bench --durability-cost N``.

The same N single-event calls (``seqproc.like`` on one hot article, one event per call and per message: the prefork
web server's case), from ``--producers`` threads, once with ``async`` (the call returns once the primary holds the
push) and once with ``replica`` (``WAIT 1`` after the push: once a replica holds it too). Calls/s, latency
percentiles, and ``replica``'s throughput as a ratio to ``async``'s. No worker runs: only the producer's side is
measured. The broker must have a replica (a Sentinel deployment, or a primary with ``replicaof`` pointed at it).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from seqproc import producer
from seqproc.models.clients import broker_client
from seqproc.models.errors import ConfigError
from seqproc.models.settings import Settings, mask_url

#: One hot article: every call on one partition.
ARTICLE = 1
#: Calls before the clock starts (connections opened, scripts loaded).
WARM_UP = 50


def measure(settings: Settings, calls: int, producers: int) -> dict[str, Any]:
    client = broker_client(settings)
    replicas = int(client.info("replication").get("connected_slaves", 0))
    if replicas < 1:
        raise ConfigError(
            f"--durability-cost needs a broker with a replica (SEQPROC_BROKER_URL={mask_url(settings.broker_url)} "
            "has none): point it at a Sentinel deployment, or start a replica of it"
        )
    report: dict[str, Any] = {"calls": calls, "producers": producers, "replicas": replicas}
    for durability in ("async", "replica"):
        report[durability] = _run(settings.model_copy(update={"publish_durability": durability}), calls, producers)
        client.flushdb()  # nothing consumes them
    report["replica_to_async_ratio"] = round(report["replica"]["calls_per_s"] / report["async"]["calls_per_s"], 3)
    report["command"] = f"seqproc bench --durability-cost {calls} --producers {producers}"
    return report


def _run(settings: Settings, calls: int, producers: int) -> dict[str, Any]:
    producer.configure(settings)
    try:
        for user in range(WARM_UP):
            producer.like(ARTICLE, user + 1)
        latencies: list[float] = []
        lock = threading.Lock()
        per_thread = max(1, calls // producers)

        def send(offset: int) -> None:
            mine = []
            for n in range(per_thread):
                started = time.perf_counter()
                producer.like(ARTICLE, offset + n)
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=send, args=(1_000_000 * (t + 1),)) for t in range(producers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        producer.configure(None)
    latencies.sort()
    return {
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
    }
