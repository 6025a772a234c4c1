"""For ``celery -A`` tools run from this repository (``celery -A seqproc.worker.app inspect ping``, ``celery flower``):
the Celery settings seqproc itself uses, built from the ``SEQPROC_*`` environment. seqproc never imports this file;
its processes build the same settings from ``seqproc.models.celery.celery_config(settings)``."""

from seqproc.models.celery import celery_config
from seqproc.models.settings import get_settings

globals().update(celery_config(get_settings()))
