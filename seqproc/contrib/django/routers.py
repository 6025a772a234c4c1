"""A database router for seqproc's tables in a database of their own.

    DATABASES = {"default": {...}, "seqproc": {...}}       # seqproc's tables in "seqproc"
    DATABASE_ROUTERS = ["seqproc.contrib.django.routers.SeqprocRouter"]
    SEQPROC = {"DJANGO_DATABASE": "seqproc"}

Reads of seqproc's models go to that alias. Migrations are refused for seqproc's models everywhere (Alembic,
``seqproc migrate``, owns their schema) and for everything on seqproc's alias when it is not ``default``, so that
``manage.py migrate --database seqproc`` cannot put Django's tables in seqproc's database.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS

from seqproc.contrib.django.conf import APP_LABEL, database_alias


class SeqprocRouter:
    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return database_alias() if model._meta.app_label == APP_LABEL else None

    def db_for_write(self, model: type[Any], **hints: Any) -> str | None:
        # The models refuse writes; routing them to the same database keeps an error about them accurate.
        return self.db_for_read(model, **hints)

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if app_label == APP_LABEL:
            return False
        alias = database_alias()
        if db == alias and alias != DEFAULT_DB_ALIAS:
            return False
        return None
