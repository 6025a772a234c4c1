"""The Celery app of the workers. It imports no domain code: tasks import the app, never the reverse."""

from __future__ import annotations

from celery import Celery

from models.settings import Settings

app = Celery("seqproc", include=["worker.tasks", "worker.jobs"])
# Lazy: read on first use, so importing this module never fails on a bad setting.
app.config_from_object("celeryconfig")


def configure(settings: Settings) -> Celery:
    """Apply ``settings`` (instead of the environment's) to the app; for the CLI, the embedded mode and tests."""
    import celeryconfig

    app.conf.update(celeryconfig.celery_config(settings))
    return app
