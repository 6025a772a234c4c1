"""seqproc's settings in a Django project: the ``SEQPROC_*`` environment, overridden by a ``SEQPROC`` dict in
Django's settings, and the database alias that holds seqproc's tables.

    SEQPROC = {
        "BROKER_URL": "redis://redis:6379/0",  # any SEQPROC_* name without the prefix, in any case
        "PARTITIONS": 16,
        "DJANGO_DATABASE": "seqproc",  # the DATABASES alias of seqproc's tables (default: "default")
    }

Precedence, highest first: the ``SEQPROC`` dict, ``SEQPROC_<NAME>_FILE`` secrets, ``SEQPROC_<NAME>`` variables, the
defaults. Keeping a value in the environment lets ``seqproc worker`` and ``seqproc relay``, which do not read Django's
settings, share it; the partition count and the result backend in particular must be the same everywhere. The app
reads the settings once, when Django starts (:meth:`SeqprocConfig.ready`); a bad value stops the start with
:class:`ImproperlyConfigured` naming the setting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS

from seqproc.models.errors import ConfigError
from seqproc.models.settings import ENV_PREFIX, Settings, load_settings

__all__ = ["APP_LABEL", "DATABASE_KEY", "SETTING", "DjangoSettings", "database_alias", "load"]

#: The app's label: its models are ``seqproc.DeadLetter`` and so on, its permissions ``seqproc.view_deadletter``.
APP_LABEL = "seqproc"
#: The name of the dict in Django's settings.
SETTING = "SEQPROC"
#: The one key of that dict that is not a seqproc setting: the DATABASES alias of seqproc's tables (also read from
#: ``SEQPROC_DJANGO_DATABASE``).
DATABASE_KEY = "DJANGO_DATABASE"


@dataclass(frozen=True)
class DjangoSettings:
    """What the app reads at start: seqproc's settings, and the alias of the database holding its tables."""

    seqproc: Settings
    database: str


def load() -> DjangoSettings:
    """Read the ``SEQPROC`` dict over the environment; raise :class:`ImproperlyConfigured` naming the setting."""
    given = _given()
    database = given.pop(DATABASE_KEY.lower(), None)
    if database is None:
        database = os.environ.get(ENV_PREFIX + DATABASE_KEY) or DEFAULT_DB_ALIAS
    if database not in django_settings.DATABASES:
        raise ImproperlyConfigured(
            f"{SETTING}[{DATABASE_KEY!r}]: must name a database of DATABASES "
            f"({', '.join(map(repr, django_settings.DATABASES))}); got {database!r}"
        )
    unknown = sorted(set(given) - set(Settings.model_fields))
    if unknown:
        raise ImproperlyConfigured(
            f"{SETTING}[{unknown[0].upper()!r}]: not a seqproc setting; the keys are the {ENV_PREFIX}* names "
            f"without the prefix (BROKER_URL, PARTITIONS, ...) and {DATABASE_KEY}"
        )
    try:
        seqproc = load_settings(**given)
    except ConfigError as error:
        raise ImproperlyConfigured(_named_as_given(str(error), given)) from None
    return DjangoSettings(seqproc=seqproc, database=str(database))


def database_alias() -> str:
    """The alias of seqproc's tables, as the app read it at start."""
    from django.apps import apps

    try:
        config: Any = apps.get_app_config(APP_LABEL)
    except LookupError:
        raise ImproperlyConfigured(
            "seqproc.contrib.django is not in INSTALLED_APPS (its router and models need the app)"
        ) from None
    return str(config.settings.database)


def _given() -> dict[str, Any]:
    """The ``SEQPROC`` dict with its keys in lower case (the settings' field names)."""
    value = getattr(django_settings, SETTING, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"{SETTING}: must be a dict (got {type(value).__name__})")
    given: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ImproperlyConfigured(f"{SETTING}: keys must be strings (got {key!r})")
        if key.lower() in given:
            raise ImproperlyConfigured(f"{SETTING}[{key!r}]: given twice (keys are case-insensitive)")
        given[key.lower()] = item
    return given


def _named_as_given(message: str, given: Mapping[str, Any]) -> str:
    """Name a value that came from the dict as ``SEQPROC['PARTITIONS']`` rather than as its environment variable,
    so that the message points where the value was written."""
    for key in given:
        message = re.sub(rf"\b{ENV_PREFIX}{key.upper()}\b", f"{SETTING}[{key.upper()!r}]", message)
    return message
