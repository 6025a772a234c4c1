"""The Django app: reads seqproc's settings once at start and points the producer at them."""

from __future__ import annotations

from django.apps import AppConfig

from seqproc.contrib.django.conf import APP_LABEL, DjangoSettings, load
from seqproc.producer.api import configure


class SeqprocConfig(AppConfig):
    name = "seqproc.contrib.django"
    label = APP_LABEL
    verbose_name = "seqproc"
    default_auto_field = "django.db.models.BigAutoField"

    #: Read in :meth:`ready`; the router and the system check take the database alias from here.
    settings: DjangoSettings

    def ready(self) -> None:
        # At start, so that a bad value stops the process with ImproperlyConfigured instead of failing a request.
        self.settings = load()
        # The outbox calls and the direct ones (seqproc.like) of this process then use the SEQPROC dict too.
        configure(self.settings.seqproc)
        from seqproc.contrib.django import checks  # noqa: F401  (registers the system checks)
