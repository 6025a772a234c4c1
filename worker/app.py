"""The Celery app of the workers. It imports no domain code: tasks import the app, never the reverse."""

from __future__ import annotations

from celery import Celery

from seqproc.models.celery import celery_config
from seqproc.models.settings import Settings, get_settings

# fixups=[]: Celery's Django fixup, on whenever DJANGO_SETTINGS_MODULE is set (as in a Django project's
# containers), would set up the user's Django project in every worker; seqproc's worker uses none of it.
# The scheduled jobs are not included: `seqproc beat` registers them (worker.beat.schedule), nothing at import.
app = Celery("seqproc", include=["seqproc.worker.tasks"], fixups=[])
# A promise, read on first use: importing this module never fails on a bad setting, and `celery -A
# seqproc.worker.app` tools get the environment's settings. seqproc's own processes pass theirs (configure).
app.add_defaults(lambda: celery_config(get_settings()))


def configure(settings: Settings) -> Celery:
    """Apply ``settings`` (instead of the environment's) to the app; for the CLI, the embedded mode and tests."""
    app.conf.update(celery_config(settings))
    return app
