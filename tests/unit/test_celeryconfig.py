"""The Celery settings the guarantees rest on."""

from __future__ import annotations

import ssl

from seqproc.models.celery import celery_broker_url, celery_config
from seqproc.models.clients import SentinelUrl
from seqproc.models.settings import Settings
from seqproc.models.transport import SENTINEL_TRANSPORT, TRANSPORT
from seqproc.models.wire import queue_name


def test_redelivery_and_safety_settings() -> None:
    conf = celery_config(Settings())
    assert conf["accept_content"] == ["json"]  # never pickle
    assert conf["task_serializer"] == "json"
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["task_acks_on_failure_or_timeout"] is False
    assert 1 <= conf["worker_prefetch_multiplier"] <= 10_000
    options = conf["broker_transport_options"]
    # A killed worker's events come back well within a minute, not after Celery's default hour...
    assert (
        options["visibility_timeout"] + options["unacked_restore_interval"] * options["unacked_restore_throttle"] < 60
    )
    # ... and the visibility timeout stays well above the apply time limit (statement timeout).
    assert options["visibility_timeout"] >= 2 * Settings().apply_time_limit_s
    assert options["priority_steps"] == [0]
    assert [q.name for q in conf["task_queues"]] == [
        *(queue_name(p) for p in range(16)),
        "seqproc.idle",
        "seqproc.jobs",
    ]


def test_transport_follows_the_broker_url() -> None:
    assert celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))["broker_transport"] == TRANSPORT
    # Always present, so that reconfiguring an app from Redis to memory:// clears it.
    assert celery_config(Settings(broker_url="memory://localhost/"))["broker_transport"] is None
    # TLS gets the same transport (reliable, fenced fetch), verifying the server's certificate unless told otherwise.
    tls = celery_config(Settings(broker_url="rediss://h:6380/0"))
    assert tls["broker_transport"] == TRANSPORT
    assert tls["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    named = celery_config(Settings(broker_url="rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem"))
    assert named["broker_transport"] == TRANSPORT
    assert named["broker_use_ssl"] is None  # kombu reads the URL's own options
    assert celery_config(Settings(broker_url="redis://h:6379/0"))["broker_use_ssl"] is None


def test_reconfiguring_the_worker_app_switches_transport() -> None:
    from seqproc.worker.app import app, configure

    configure(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.broker_transport == TRANSPORT
    configure(Settings(broker_url="memory://localhost/", result_backend="memory://"))
    assert app.conf.broker_transport is None
    assert (
        app.connection_for_write().transport_cls in ("memory", None)
        or "memory" in str(type(app.connection_for_write().transport)).lower()
    )


def test_every_scheduled_job_has_a_body_and_a_task() -> None:
    from celery import Celery

    from seqproc.models.wire import JOB_TASK_PREFIX
    from seqproc.worker.app import app
    from seqproc.worker.beat.jobs import JOBS
    from seqproc.worker.beat.schedule import register_jobs

    names = ("reconcile", "purge_ledger", "expire_reservations", "snapshot_lag")
    assert [job.name for job in JOBS] == list(names)
    assert all(callable(job.body) for job in JOBS)
    settings = Settings(reconcile_interval_s=7)
    assert {job.name: job.interval_s(settings) for job in JOBS}["reconcile"] == 7
    # Nothing is registered at import: `seqproc beat` registers the tasks and their schedule.
    assert not {f"{JOB_TASK_PREFIX}{name}" for name in names} & set(app.tasks)
    beat_app = Celery("beat-test", fixups=[])
    register_jobs(beat_app, JOBS, settings)
    schedule = beat_app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} == {f"{JOB_TASK_PREFIX}{name}" for name in names}
    assert {f"{JOB_TASK_PREFIX}{name}" for name in names} <= set(beat_app.tasks)
    assert schedule["seqproc-reconcile"]["schedule"] == 7


SENTINELS = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380;sentinel://127.0.0.1:26381/2"


def test_a_sentinel_broker_gets_seqprocs_transport_on_the_master_the_sentinels_name() -> None:
    conf = celery_config(Settings(broker_url=SENTINELS, sentinel_master="orders"))
    assert conf["broker_transport"] == SENTINEL_TRANSPORT
    options = conf["broker_transport_options"]
    assert options["master_name"] == "orders"
    # Every sentinel reaches the transport through its option; Celery gets the first one only, so that kombu never
    # switches to an "alternate" URL whose scheme would bring in its stock Sentinel transport (no fenced fetch).
    assert options["sentinels"] == SENTINELS
    assert conf["broker_url"] == "sentinel://127.0.0.1:26379/2"
    assert options["sentinel_kwargs"]["socket_timeout"] <= 2
    assert celery_config(Settings(broker_url=SENTINELS))["broker_transport_options"]["master_name"] == "seqproc"


def test_a_sentinel_url_is_read_as_kombu_writes_it() -> None:
    parsed = SentinelUrl.parse("sentinel://:p%40ss@a:1;sentinel://b;sentinel://c:3/4")
    assert parsed.sentinels == (("a", 1), ("b", 26379), ("c", 3))
    assert (parsed.db, parsed.password) == (4, "p@ss")
    assert celery_broker_url("sentinel://:p%40ss@a:1;sentinel://b/4") == "sentinel://:p%40ss@a:1/4"
