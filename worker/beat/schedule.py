"""What ``seqproc beat`` does with the scheduled jobs (``worker.beat.jobs.JOBS``, each a ``Job(name, body, interval
setting)``): one Celery task per job, run as a singleton (``worker.beat.singleton``), and the beat schedule
(:func:`register_jobs`). Nothing is registered at import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, Task

from seqproc.models.settings import Settings
from seqproc.models.wire import JOBS_QUEUE
from seqproc.worker import runtime
from seqproc.worker.beat.jobs import Job, run_job


def register_jobs(app: Celery, jobs: Sequence[Job], settings: Settings) -> None:
    """Register each of ``jobs`` as a task of ``app`` and schedule it (``seqproc beat``)."""
    for job in jobs:
        app.task(name=job.task_name, ignore_result=True, bind=True, shared=False)(_task_body(job))
    app.conf.beat_schedule = schedule(jobs, settings)


def schedule(jobs: Sequence[Job], settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery beat's schedule of ``jobs``."""
    return {
        f"seqproc-{job.name}": {
            "task": job.task_name,
            "schedule": job.interval_s(settings),
            "options": {"queue": JOBS_QUEUE},
        }
        for job in jobs
    }


def _task_body(job: Job) -> Callable[..., str]:
    def run(self: Task[Any, Any]) -> str:
        return run_job(runtime.of(self.app), job)

    run.__name__ = run.__qualname__ = job.name
    return run


__all__ = ["register_jobs", "schedule"]
