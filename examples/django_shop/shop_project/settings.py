"""Settings of the shop example, read from the environment.

Two databases:

- ``default``: the shop's own (``SHOP_DATABASE_URL``): its orders, Django's tables, and seqproc's outbox table, so
  that an order and the events written with it commit together. ``seqproc migrate`` and ``seqproc relay`` find it
  as ``SEQPROC_OUTBOX_DATABASE_URL``.
- ``seqproc``: seqproc's tables (``SEQPROC_DATABASE_URL``, the worker's database), read through the read-only
  models of ``seqproc.contrib.django`` (the router sends them there).

seqproc's own settings (broker, result backend, partition count) come from the same ``SEQPROC_*`` variables the
worker and the relay read; the ``SEQPROC`` dict below may override any of them for this process.
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver", *os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",")]


def database(url: str) -> dict[str, Any]:
    """A Django DATABASES entry from a ``postgresql://user:password@host:port/name`` URL (``+psycopg`` allowed)."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise ValueError(f"the shop example runs on PostgreSQL (got a {parts.scheme}:// URL)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Each gunicorn worker keeps its connections between requests.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


DATABASES = {
    "default": database(os.environ.get("SHOP_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/shop")),
    "seqproc": database(os.environ.get("SEQPROC_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/seqproc")),
}
DATABASE_ROUTERS = ["seqproc.contrib.django.routers.SeqprocRouter"]

SEQPROC = {
    # seqproc's tables are read through the "seqproc" alias. Any other SEQPROC_* setting may be given here too
    # ("PARTITIONS": 16, "BROKER_URL": ...): it then overrides the environment for this process only, so keep the
    # ones the worker and the relay must share (partition count, broker, result backend) in the environment.
    "DJANGO_DATABASE": "seqproc",
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "seqproc.contrib.django",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A database or seqproc's broker down: 503 with a short message (the log keeps the details).
    "shop.middleware.ServiceUnavailableMiddleware",
]

ROOT_URLCONF = "shop_project.urls"
WSGI_APPLICATION = "shop_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
