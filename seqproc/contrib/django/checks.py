"""System checks (``manage.py check``, run by ``runserver`` and ``migrate``): a configuration that would read
seqproc's tables from the wrong database is reported before a request fails on it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS
from django.utils.module_loading import import_string

from seqproc.contrib.django.conf import DATABASE_KEY, SETTING, database_alias
from seqproc.contrib.django.routers import SeqprocRouter


# Tagged "models", which `check` runs by default ("database" checks run only with --database); it queries nothing.
@checks.register(checks.Tags.models)
def check_router(
    app_configs: Sequence[AppConfig] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """seqproc's tables outside ``default`` need :class:`SeqprocRouter` (or a router of the project's own that
    routes them: silence ``seqproc.E001`` then)."""
    alias = database_alias()
    if alias == DEFAULT_DB_ALIAS:
        return []
    for router in getattr(settings, "DATABASE_ROUTERS", []):
        found = import_string(router) if isinstance(router, str) else router
        if isinstance(found, SeqprocRouter) or (isinstance(found, type) and issubclass(found, SeqprocRouter)):
            return []
    return [
        checks.Error(
            f"{SETTING}[{DATABASE_KEY!r}] is {alias!r} but no router sends seqproc's models there",
            hint="add 'seqproc.contrib.django.routers.SeqprocRouter' to DATABASE_ROUTERS",
            id="seqproc.E001",
        )
    ]
