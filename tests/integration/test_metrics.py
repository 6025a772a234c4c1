"""A real worker's Prometheus endpoint, scraped over HTTP while it works and after, and its structured log lines."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.wire import article_key, bell_key, partition_for, product_key, queue_name
from tests.conftest import WorkerProcess, free_port, wait_for

pytestmark = pytest.mark.services

DELAY_S = 1.5


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[Any, float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_worker_exports_counters_histograms_and_lag_gauges(
    clean: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    article = 21
    part = partition_for(article_key(article), clean.partitions)
    product = next(p for p in range(1, 10_000) if partition_for(product_key(p), clean.partitions) != part)
    part_product = partition_for(product_key(product), clean.partitions)
    worker = start_worker(
        clean,
        "0-15",
        SEQPROC_METRICS_PORT=str(port),
        SEQPROC_FAULT_APPLY_DELAY_S=str(DELAY_S),
        SEQPROC_LOG_FORMAT="json",
    )
    before = scrape(port)
    epochs = [value(before, "seqproc_partition_epoch", partition=str(p)) for p in range(16)]
    assert all(epoch >= 1 for epoch in epochs), epochs  # one gauge per owned partition, its current epoch
    assert value(before, "seqproc_queue_depth", partition=str(part)) == 0
    assert value(before, "seqproc_oldest_event_age_seconds", partition=str(part)) == 0
    assert total(before, "seqproc_events_applied_total") == 0

    first = producer.like(article, 1)
    # The worker is now asleep before applying its first flush: what comes next waits in the queue.
    wait_for(lambda: "flush sleeping" in worker.log(), 20, "the worker's first (delayed) flush")
    receipts = [first, *(producer.like(article, user) for user in range(2, 6))]
    receipts.append(producer.like(article, 99, idempotency_key="metrics-dup"))
    receipts.append(producer.like(article, 99, idempotency_key="metrics-dup"))  # a duplicate
    receipts.append(producer.reserve(product, 1, reservation_id="metrics-r1"))  # rejected: no such product
    client = redis.Redis.from_url(clean.broker_url)
    client.lpush(queue_name(part), b"\x00 not a message")  # dead-lettered
    client.lpush(bell_key(queue_name(part)), "1")
    time.sleep(0.3)

    during = scrape(port)  # served while the worker's main thread sleeps
    assert value(during, "seqproc_queue_depth", partition=str(part)) >= 2
    age = value(during, "seqproc_oldest_event_age_seconds", partition=str(part))
    assert 0.3 <= age < 30

    outcomes = producer.wait_all(receipts, timeout_s=60)
    statuses = [o.status for o in outcomes]
    assert statuses.count("applied") == 6
    assert statuses.count("duplicate") == 1
    assert statuses.count("rejected") == 1
    reason = outcomes[-1].reason
    assert reason is not None
    wait_for(
        lambda: value(scrape(port), "seqproc_events_dead_lettered_total", partition=str(part), type="message") == 1,
        30,
        "the dead letter counted",
    )

    after = scrape(port)
    assert value(after, "seqproc_events_applied_total", partition=str(part), type="like") == 6
    assert total(after, "seqproc_events_applied_total") == 6
    assert value(after, "seqproc_events_duplicate_total", partition=str(part), type="like") == 1
    assert total(after, "seqproc_events_duplicate_total") == 1
    rejected = value(after, "seqproc_events_rejected_total", partition=str(part_product), type="reserve", reason=reason)
    assert rejected == 1
    assert total(after, "seqproc_events_rejected_total") == 1
    assert value(after, "seqproc_queue_depth", partition=str(part)) == 0
    assert value(after, "seqproc_oldest_event_age_seconds", partition=str(part)) == 0
    # Each flush slept DELAY_S before its commit: the latency histogram measured that.
    flushes = value(after, "seqproc_apply_latency_seconds_count")
    assert flushes >= 2
    assert value(after, "seqproc_apply_latency_seconds_sum") >= flushes * DELAY_S
    assert value(after, "seqproc_apply_latency_seconds_bucket", le="1.0") == 0
    # Every event of every partition batch is in the batch-size histogram, once.
    assert value(after, "seqproc_batch_size_events_sum") == 8
    assert value(after, "seqproc_batch_size_events_bucket", le="+Inf") == value(
        after, "seqproc_batch_size_events_count"
    )
    assert value(after, "process_resident_memory_bytes") > 0

    # Structured log lines: one JSON object per line; each non-applied event carries partition, key and idem key.
    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    duplicate = [r for r in records if r.get("outcome") == "duplicate"]
    assert len(duplicate) == 1
    assert duplicate[0]["partition"] == part
    assert duplicate[0]["key"] == article_key(article)
    assert duplicate[0]["idempotency_key"] == "metrics-dup"
    assert duplicate[0]["first"] == "applied"
    assert "idempotency_key=metrics-dup" in duplicate[0]["message"]
    refused = [r for r in records if r.get("outcome") == "rejected"]
    assert [(r["partition"], r["key"], r["idempotency_key"], r["reason"]) for r in refused] == [
        (part_product, product_key(product), "reserve:metrics-r1", reason)
    ]
    stored = [r for r in records if r.get("outcome") == "dead_letter_stored"]
    assert [(r["partition"], r["queue"]) for r in stored] == [(part, queue_name(part))]
    assert "cannot decode" in stored[0]["error"] or "not" in stored[0]["error"]


def test_a_taken_metrics_port_fails_the_start_with_one_clear_line(
    clean: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker(clean, "0-15", ready=False, SEQPROC_METRICS_PORT=str(port))
        assert worker.process.wait(30) != 0
    assert f"SEQPROC_METRICS_PORT: cannot serve metrics on 127.0.0.1:{port}" in worker.log()


def test_the_batch_size_does_not_depend_on_the_prefetch(
    clean: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    # One event per message, a prefetch of 4 messages, batches of up to 200 events: celery-batches #17 would apply
    # them 4 at a time. 300 messages wait before the worker starts.
    port = free_port()
    sender = clean.model_copy(update={"max_events_per_message": 1, "linger_ms": 0})
    producer.configure(sender)
    receipts = [producer.like(article, 1) for article in range(1, 301)]
    worker = start_worker(
        clean, "0-15", SEQPROC_METRICS_PORT=str(port), SEQPROC_PREFETCH_MESSAGES="4", SEQPROC_BATCH_SIZE="200"
    )
    assert {o.status for o in producer.wait_all(receipts, timeout_s=60)} == {"applied"}
    samples = scrape(port)
    flushes = value(samples, "seqproc_apply_latency_seconds_count")
    assert value(samples, "seqproc_batch_size_events_sum") == 300
    # Each flush carries every partition's events: 300 events in a handful of flushes, not 75 flushes of 4.
    assert flushes <= 10, f"{flushes} flushes for 300 one-event messages: the prefetch capped the batches"
    assert worker.process.poll() is None
