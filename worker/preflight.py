"""Before a worker claims anything: can it reach its broker, its database and its result backend?

A worker that claims partitions and then cannot consume them fences the healthy worker that had them and leaves
them without a consumer. So ``seqproc worker`` asks each service first, all at once, each within
``DEFAULT_TIMEOUT_S``; one that does not answer stops the worker with one line naming its variable (the URL's
password masked) and exit code 5, before any partition changes hands.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from seqproc.models.clients import redis_client
from seqproc.models.errors import ServiceUnavailable, first_line
from seqproc.models.settings import Settings, mask_url
from seqproc.models.wire import is_redis_url

#: How long each service may take to answer (they are asked at the same time, so this bounds the whole check).
DEFAULT_TIMEOUT_S = 3.0
#: The oldest Redis the broker may run: the fetch script pops many messages with one ``RPOP key count`` (6.2).
MIN_REDIS_VERSION = (6, 2)


def preflight(settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Raise :class:`ServiceUnavailable` naming every service among the broker, the database and the result
    backend that does not answer within ``timeout_s``."""
    checks: list[tuple[str, str, Callable[[str, float], None]]] = [
        ("SEQPROC_BROKER_URL", settings.broker_url, functools.partial(_broker, master=settings.sentinel_master)),
        ("SEQPROC_DATABASE_URL", settings.database_url, _database),
    ]
    if is_redis_url(settings.result_backend):  # memory:// lives in the process: nothing to reach
        checks.append(
            (
                "SEQPROC_RESULT_BACKEND",
                settings.result_backend,
                functools.partial(_redis, master=settings.sentinel_master),
            )
        )
    errors: dict[str, str | None] = {}

    def run(setting: str, url: str, check: Callable[[str, float], None]) -> None:
        try:
            check(url, timeout_s)
            errors[setting] = None
        except BrokerTooOld as error:
            errors[setting] = str(error)
        except Exception as error:
            errors[setting] = f"cannot reach {mask_url(url)} ({first_line(error, limit=300)})"

    # Daemon threads: a check stuck past its timeout (a DNS lookup that hangs) must not keep the process alive.
    threads = [threading.Thread(target=run, args=check, daemon=True) for check in checks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s + 1)
    failed = []
    for setting, url, _check in checks:
        if setting not in errors:
            errors[setting] = f"cannot reach {mask_url(url)} (no answer within {timeout_s:g} s)"
        if errors[setting] is not None:
            failed.append((setting, mask_url(url), errors[setting]))
    if failed:
        said = "; ".join(f"{setting}: {error}" for setting, _url, error in failed)
        raise ServiceUnavailable(f"{said}; the worker claimed no partition", setting=failed[0][0], url=failed[0][1])


def _redis(url: str, timeout_s: float, *, master: str) -> None:
    # One try within the probe's time: it asks whether the server answers now, it does not wait for it.
    client = redis_client(url, sentinel_master=master, timeout_s=timeout_s, connect_timeout_s=timeout_s, retry=None)
    try:
        client.ping()
    finally:
        client.close()


class BrokerTooOld(Exception):
    """The broker answers, but runs a Redis seqproc cannot use."""


def redis_too_old(versions: Iterable[str]) -> str | None:
    """What is wrong with a broker whose servers run ``versions`` (``INFO server``'s ``redis_version``), if anything."""
    for version in versions:
        numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
        if numbers < MIN_REDIS_VERSION:
            wanted = ".".join(map(str, MIN_REDIS_VERSION))
            return f"Redis {version} is too old: seqproc's broker needs Redis {wanted} or newer (RPOP with a count)"
    return None


def _server_versions(info: dict[str, Any]) -> list[str]:
    """``redis_version`` of one server's ``INFO server``, or of each node's (a cluster client answers per node)."""
    if "redis_version" in info:
        return [str(info["redis_version"])]
    return [str(node["redis_version"]) for node in info.values() if isinstance(node, dict) and "redis_version" in node]


def _broker(url: str, timeout_s: float, *, master: str) -> None:
    if is_redis_url(url):
        _redis(url, timeout_s, master=master)
        client = redis_client(url, sentinel_master=master, timeout_s=timeout_s, connect_timeout_s=timeout_s, retry=None)
        try:
            problem = redis_too_old(_server_versions(client.info("server")))
        finally:
            client.close()
        if problem is not None:
            raise BrokerTooOld(problem)
        return
    from kombu import Connection

    with Connection(url, connect_timeout=timeout_s) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)  # no pause of kombu's between tries


def _database(url: str, timeout_s: float) -> None:
    if url.startswith("sqlite"):
        return  # a file: whether it holds seqproc's tables is checked next, with the schema
    # libpq counts whole seconds, 2 at least.
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": max(2, round(timeout_s))})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
