"""Typed settings, read from the environment (prefix ``SEQPROC_``).

One object for the producer, the worker, the CLI and ``celeryconfig.py``. A bad value fails at start with one line
naming the variable, the rule and the value given (:class:`ConfigError`).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from seqproc.models.errors import ConfigError
from seqproc.models.wire import DEFAULT_SENTINEL_MASTER, SENTINEL_SCHEME, is_cluster_url, is_redis_url

#: Local services on a developer machine; docker-compose overrides these.
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/seqproc"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/1"
#: 16 partitions: enough to spread over a few worker hosts; fixed per deployment (changing it re-routes keys).
DEFAULT_PARTITIONS = 16
#: Outcome notifications are kept a day after a topic's last one, and about a thousand per topic: room for a user's
#: session of clicks, bounded memory for a topic nobody reads (a few hundred bytes each).
DEFAULT_NOTIFY_TTL_S = 86_400
DEFAULT_NOTIFY_MAX = 1_000
MAX_PARTITIONS = 1024
#: A healthy server answers within its statement time limit; 5 s more covers a congested network, and keeps a worker
#: whose database connection went half-open from stalling much past the limit (its partitions' lease, 10 s by
#: default, is renewed from the same loop).
DEFAULT_DATABASE_SOCKET_TIMEOUT_S = 5.0

ENV_PREFIX = "SEQPROC_"

logger = logging.getLogger(__name__)


class Settings(BaseSettings):
    """Everything configurable. Field ``x`` is read from ``SEQPROC_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_RESULT_BACKEND
    #: The master the sentinels of a ``sentinel://`` broker or result backend monitor (``sentinel monitor <name>``).
    sentinel_master: Annotated[str, Field(min_length=1)] = DEFAULT_SENTINEL_MASTER
    partitions: Annotated[int, Field(ge=1, le=MAX_PARTITIONS)] = DEFAULT_PARTITIONS

    #: Most events applied in one database transaction.
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    #: The worker applies what it holds once no message came for this long (a backlog drains into one batch).
    batch_interval_ms: Annotated[int, Field(ge=0, le=10_000)] = 2
    #: ... or this long after the first message it holds came, whichever is first.
    batch_max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 50
    #: Messages a worker process may hold unacknowledged (Celery prefetch for its one process).
    prefetch_messages: Annotated[int, Field(ge=1, le=10_000)] = 64
    #: Producer: under concurrency, how long a send may wait for more calls to share its message (0: never wait;
    #: a lone sequential caller never waits either way).
    linger_ms: Annotated[float, Field(ge=0, le=1_000)] = 1
    #: Most events packed in one message by the producer.
    max_events_per_message: Annotated[int, Field(ge=1, le=10_000)] = 500

    #: Idempotency keys are kept this long; must exceed the broker's longest redelivery delay.
    dedup_window_days: Annotated[float, Field(gt=0, le=3650)] = 7
    #: A message unacknowledged this long is redelivered (Redis transport). At least twice ``apply_time_limit_s``
    #: (checked at start); it bounds how fast a killed worker's events come back.
    visibility_timeout_s: Annotated[int, Field(ge=5, le=86_400)] = 30
    #: How often workers look for messages past the visibility timeout.
    restore_interval_s: Annotated[int, Field(ge=1, le=3_600)] = 5
    #: Statement timeout of an apply transaction (the task time limit of this design).
    apply_time_limit_s: Annotated[float, Field(gt=0, le=3_600)] = 10
    #: Longest pause between retries of a transaction that failed for a transient reason.
    retry_backoff_max_s: Annotated[float, Field(gt=0, le=300)] = 5
    #: Producer: how long a call may wait for a broker that does not answer (or drops its connection) before it
    #: raises :class:`PublishError`; a call's ``timeout_s=`` overrides it.
    publish_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10
    #: Producer: when a direct publish returns. ``async``: once the broker's primary holds it (a failover before
    #: its replica copied it loses it: counted lost, see ``SEQPROC_LOSS_GRACE_S``). ``replica``: once a replica
    #: acknowledges it too (``WAIT 1``; on a Redis Cluster, on each primary that took a push, on the connection
    #: that pushed); if none does within ``publish_timeout_s`` the call raises :class:`PublishError`
    #: (``maybe_sent``: it reached the primary) carrying the receipts.
    publish_durability: Literal["async", "replica"] = "async"
    #: ... but a broker that refuses the connection (nothing listens there, or its host name does not resolve) is
    #: retried this long at most, in case it is restarting: a web request learns within about a second.
    publish_refused_retry_s: Annotated[float, Field(ge=0, le=300)] = 1
    #: Outcomes kept in the result backend for ``receipt.wait()``.
    outcome_ttl_s: Annotated[int, Field(ge=60, le=30 * 86_400)] = 86_400
    #: A key's pending index (what ``seqproc.preview`` reads) is kept this long after the key's last push: an entry
    #: whose message the broker lost (a failover) leaves the preview after it. A backlog older than this is not
    #: previewed in full. 0: no index (a push costs one HSET per event and one EXPIRE per key less; previews then
    #: show the applied state only).
    pending_ttl_s: Annotated[int, Field(ge=0, le=30 * 86_400)] = 3_600
    #: Outcome notifications (``notify="user:42"``): a topic keeps them this long after its last one...
    notify_ttl_s: Annotated[int, Field(ge=1, le=30 * 86_400)] = DEFAULT_NOTIFY_TTL_S
    #: ... and about this many (the oldest dropped first; Redis trims streams approximately, ``MAXLEN ~``).
    notify_max: Annotated[int, Field(ge=1, le=10_000_000)] = DEFAULT_NOTIFY_MAX

    #: How long a worker waits for a reply on an open broker connection (a fetch, an ack, a lease renewal, an event)
    #: before it counts the broker as gone silent (a connection gone half-open, a host gone without closing it): it
    #: then fails every broker call at once and reconnects (``seqproc.models.broker_watch``). A worker notices within
    #: this long after it next needs the broker, and within ``1 s`` + this while idle (its wait on the bells, which
    #: has no socket timeout of its own, is overdue). Keep it well below ``lease_s``: a worker cut off takes its
    #: partitions back within about this long after the network heals.
    broker_socket_timeout_s: Annotated[float, Field(ge=1, le=3_600)] = 5
    #: How long past a statement's time limit (``apply_time_limit_s``) a worker, relay or beat waits for a byte from
    #: the database before it counts the connection as dead, closes it and tries again on a new one: the bound on
    #: noticing a database connection gone half-open (a black-holed peer, a stalled proxy), mid-transaction or idle
    #: in the pool. Also the TCP keepalive and user timeout of their connections (a peer whose kernel went silent)
    #: and their connect timeout (at least 2 s).
    database_socket_timeout_s: Annotated[float, Field(ge=1, le=3_600)] = DEFAULT_DATABASE_SOCKET_TIMEOUT_S
    #: Loss detection: a gap in a producer's sequence (events that did not come before later ones) still open after
    #: this long is declared lost (logged, ``seqproc_events_lost_total``, ``lost`` in ``seqproc status``). Longer than
    #: the visibility timeout: a redelivered message comes back within it and fills its gap.
    loss_grace_s: Annotated[float, Field(ge=1, le=86_400)] = 120
    #: Loss detection of a producer's last events (a tail no later message reveals): a producer process looks at the
    #: broker this often while some of its events are not known to be on a replica, and after the broker's master
    #: changed (a failover, a restart) it sends each partition a mark of where its sequence stands, which reveals
    #: what the old master took with it (``seqproc.producer.marks``). 0: no marks.
    sequence_mark_s: Annotated[float, Field(ge=0, le=3_600)] = 1
    #: ``--partitions auto``: how long a partition lease lasts without renewal (renewed every third of it). A worker
    #: that stops renewing loses its partitions to the others after this long.
    lease_s: Annotated[float, Field(ge=1, le=600)] = 10

    #: Scheduled jobs (``seqproc beat``): several Redis masters, comma-separated, make each job's lock a Redlock
    #: quorum over them (empty: one lock on the broker's Redis).
    lock_urls: Annotated[tuple[str, ...], NoDecode] = ()
    #: A job's lock lasts this long without renewal (renewed every third while the job runs).
    job_lock_s: Annotated[float, Field(ge=1, le=3_600)] = 60
    #: How often each scheduled job runs.
    reconcile_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 300
    purge_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 3_600
    expire_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60
    lag_snapshot_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 15
    #: A reservation left active this long is released by the expiry job (through its partition queue).
    reservation_ttl_s: Annotated[int, Field(ge=1, le=30 * 86_400)] = 900
    #: Rows deleted per statement by the ledger purge (bounded chunks keep its locks short).
    purge_chunk: Annotated[int, Field(ge=1, le=1_000_000)] = 5_000
    #: Workers serve Prometheus metrics on this port (0: off). Several workers on one host need different ports.
    metrics_port: Annotated[int, Field(ge=0, le=65_535)] = 0
    #: ... on this address (0.0.0.0 in a container, for Prometheus to reach it).
    metrics_address: str = "127.0.0.1"

    #: The transactional outbox (``seqproc.outbox``): the database of the application whose transactions enqueue
    #: events, where ``seqproc migrate`` creates the outbox table and ``seqproc relay`` reads it. Empty: seqproc's
    #: own database (``database_url``).
    outbox_database_url: str = ""
    #: ``seqproc relay``: most outbox rows one relay pass sends (one message per partition, split at
    #: ``max_events_per_message``).
    relay_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 2_000
    #: ... how long it waits before looking again when it found nothing to send (it looks again at once when it
    #: did), doubled after each pass that found nothing up to 5 times this: the most a committed event waits for
    #: the relay on an idle system.
    relay_interval_ms: Annotated[int, Field(ge=1, le=60_000)] = 20

    #: Modules that declare domains (``seqproc.Domain``), comma-separated (``myapp.wallet,myapp.seats``): producers and
    #: workers import them, so that both know every event type. The built-in domains are always there.
    domains: Annotated[tuple[str, ...], NoDecode] = ()
    #: Workers' own lifecycle hooks (``seqproc.worker.hooks``), comma-separated: ``module`` (its functions named
    #: after the hooks) or ``module:attribute`` (an object with such methods), subscribed at the worker's start-up.
    hooks: Annotated[tuple[str, ...], NoDecode] = ()

    #: Send Celery task events (Flower needs them); they cost CPU per message.
    task_events: bool = True
    log_level: str = "INFO"
    #: ``text`` (one readable line per record) or ``json`` (one object per line, per-event fields as fields).
    log_format: str = "text"

    #: ``seqproc flower``: the port of the monitoring dashboard.
    flower_port: Annotated[int, Field(ge=1, le=65_535)] = 5555
    #: ... the address it binds: loopback by default; any other address requires ``flower_basic_auth``.
    flower_address: str = "127.0.0.1"
    #: ... HTTP basic auth, ``user:password[,user2:password2]`` (a secret: masked, may come from a ``_FILE``).
    #: Empty: no auth (Flower then also refuses its /api).
    flower_basic_auth: str = ""
    #: ... served under this path (``flower`` -> ``/flower/``), behind a reverse proxy; empty: at the root.
    flower_url_prefix: str = ""

    @field_validator("database_url", "outbox_database_url")
    @classmethod
    def _database_url(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name == "outbox_database_url":
            return value
        scheme = value.split("://", 1)[0]
        if "://" not in value or not scheme.startswith(("postgres", "sqlite")):
            raise ValueError("must be a postgresql:// or sqlite:/// URL")
        if scheme in ("postgresql", "postgres"):
            # psycopg 3 is the driver this project ships with.
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if not (is_redis_url(value) or value.startswith(("memory://", "amqp://", "pyamqp://"))):
            raise ValueError(
                "must be a redis://, rediss://, sentinel://h:p;sentinel://h:p/db, redis+cluster://h:p,h:p or "
                "memory:// URL (amqp:// works, Redis is advised)"
            )
        _check_sentinel_url(value)
        _check_cluster_url(value)
        query = urlsplit(value).query
        if any(param.partition("=")[0].strip().lower() == "password" for param in query.split("&")):
            # Kombu reads the password from the user info only; a password= parameter crashes it.
            raise ValueError("must carry its password as redis://:PASSWORD@host, not as ?password=")
        return value

    @field_validator("result_backend")
    @classmethod
    def _result_backend(cls, value: str) -> str:
        if not (is_redis_url(value) or value.startswith("memory://")):
            raise ValueError(
                "must be a redis://, rediss://, sentinel://h:p;sentinel://h:p/db, redis+cluster://h:p,h:p or "
                "memory:// URL (it holds per-event outcomes)"
            )
        _check_sentinel_url(value)
        _check_cluster_url(value)
        return value

    @field_validator("lock_urls", mode="before")
    @classmethod
    def _lock_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):  # a JSON list, as pydantic-settings writes lists
                try:
                    value = json.loads(text)
                except ValueError:
                    raise ValueError("must be a comma-separated list of redis:// URLs (or a JSON list)") from None
                if not isinstance(value, list):
                    raise ValueError("must be a comma-separated list of redis:// URLs (or a JSON list)")
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        for url in value or []:
            if not is_redis_url(str(url)):
                raise ValueError("must be a comma-separated list of redis:// URLs")
        return value

    @field_validator("domains", "hooks", mode="before")
    @classmethod
    def _modules(cls, value: Any, info: ValidationInfo) -> Any:
        """Comma-separated module paths; ``hooks`` may also name an attribute (``module:attribute``)."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for name in value or []:
            module, colon, attribute = str(name).partition(":")
            if colon and info.field_name == "domains":
                module = str(name)
            if not all(part.isidentifier() for part in module.split(".")) or (colon and not attribute.isidentifier()):
                paths = "module paths such as myapp.wallet"
                if info.field_name == "hooks":
                    paths = "module or module:attribute paths such as myapp.audit"
                raise ValueError(f"must be comma-separated {paths} (got {name!r})")
        return tuple(value or ())

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        fmt = value.strip().lower()
        if fmt not in ("text", "json"):
            raise ValueError("must be text or json")
        return fmt

    @field_validator("metrics_address", "flower_address")
    @classmethod
    def _address(cls, value: str) -> str:
        # An empty address would make Flower listen on every interface.
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError("must be an IP address or a host name (127.0.0.1: this host only; 0.0.0.0: every one)")
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _flower_basic_auth(cls, value: str) -> str:
        # The message never repeats the value: it is a password.
        if not value:
            return value
        for number, pair in enumerate(value.split(","), 1):
            user, colon, password = pair.partition(":")
            if not user or not colon or not password or any(c.isspace() or not c.isprintable() for c in pair):
                raise ValueError(
                    f"must be user:password[,user2:password2] with no spaces (entry {number} is not user:password)"
                )
        return value

    @field_validator("flower_url_prefix")
    @classmethod
    def _flower_url_prefix(cls, value: str) -> str:
        prefix = value.strip("/")
        if prefix and not all(c.isalnum() or c in "-._~/" for c in prefix):
            raise ValueError("must be a URL path such as flower or ops/flower (letters, digits, - . _ ~ /)")
        return prefix

    @model_validator(mode="after")
    def _visibility_above_apply_time(self) -> Settings:
        # A message redelivered while its batch is still being applied would be applied again behind newer events
        # of its keys (order broken); twice the statement timeout leaves room for the commit and the ack.
        if self.visibility_timeout_s < 2 * self.apply_time_limit_s:
            raise ValueError(
                f"{ENV_PREFIX}VISIBILITY_TIMEOUT_S: must be >= 2 * {ENV_PREFIX}APPLY_TIME_LIMIT_S, or a message "
                "could be redelivered while it is still being applied "
                f"(got {self.visibility_timeout_s} and {self.apply_time_limit_s:g})"
            )
        return self

    @property
    def outbox_url(self) -> str:
        """The database holding the outbox table: ``outbox_database_url``, or seqproc's own."""
        return self.outbox_database_url or self.database_url

    @property
    def embedded(self) -> bool:
        """True when the broker is Celery's in-process memory transport (demo and unit tests)."""
        return self.broker_url.startswith("memory://")

    def masked(self) -> dict[str, Any]:
        """The settings with every password (in a URL, in ``flower_basic_auth``) replaced by ``***``: safe to print
        and log."""
        masked: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, str) and "://" in value:
                value = mask_url(value)
            elif isinstance(value, list | tuple):
                value = [mask_url(v) if isinstance(v, str) else v for v in value]
            masked[name] = value
        return masked | {"flower_basic_auth": mask_basic_auth(self.flower_basic_auth)}


#: Query parameters that carry a password (``redis://h/0?password=...``, libpq's ``sslpassword``): masked too.
SECRET_QUERY_PARAMS = ("password", "passwd", "pass", "pwd", "sslpassword", "secret", "token")


def _check_cluster_url(value: str) -> None:
    if is_cluster_url(value):
        from seqproc.models.clients import ClusterUrl  # (redis-py, loaded only for such a URL)

        ClusterUrl.parse(value)  # its ValueError says what is wrong


def _check_sentinel_url(value: str) -> None:
    if not value.startswith(SENTINEL_SCHEME):
        return
    for part in value.split(";"):
        if not part.strip().startswith(SENTINEL_SCHEME):
            raise ValueError("must list its sentinels as sentinel://h1:p1;sentinel://h2:p2/db (every part sentinel://)")
        tail = urlsplit(part.strip()).path.strip("/")
        if tail and not tail.isdigit():
            raise ValueError("must end with the database number (sentinel://h1:p1;sentinel://h2:p2/0)")


def mask_url(url: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://:***@host/0``, ``redis://host/0?password=secret`` ->
    ``redis://host/0?password=***``; URLs without a password are unchanged. Text that does not parse as a URL but
    may hold a password (an ``@`` or a ``?``) is masked whole. A Sentinel URL is masked part by part."""
    if url.startswith(SENTINEL_SCHEME) and ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "***" if "@" in url or "?" in url else url
    masked = parts
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        masked = masked._replace(netloc=f"{parts.username or ''}:***@{host}")
    masked = masked._replace(query=_mask_query(parts.query))
    return url if masked == parts else urlunsplit(masked)


def _mask_query(query: str) -> str:
    params = []
    for param in query.split("&"):
        name, equals, _value = param.partition("=")
        if equals and unquote(name).strip().lower() in SECRET_QUERY_PARAMS:
            param = f"{name}=***"
        params.append(param)
    return "&".join(params)


def mask_url_list(value: object) -> str:
    """A list setting (``lock_urls``) as given (comma-separated, a JSON list, a list), each entry masked. If an entry
    is not a ``scheme://`` URL (a comma inside a password splits it: ``redis://:pa`` and ``ss@host``), or the value
    cannot be split into entries, it is masked whole."""
    entries: object = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                entries = json.loads(text)
            except ValueError:
                return "***"
        else:
            entries = text.split(",")
    if not isinstance(entries, list | tuple) or not all(isinstance(e, str) and "://" in e for e in entries):
        return "***"
    return ",".join(mask_url(entry.strip()) for entry in entries)


def mask_basic_auth(credentials: str) -> str:
    """``alice:secret,bob:pw`` -> ``alice:***,bob:***``; empty stays empty."""
    return ",".join(f"{pair.partition(':')[0]}:***" for pair in credentials.split(",")) if credentials else ""


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting: ``SEQPROC_PARTITIONS: must be >= 1 (got '0')``. Passwords in the values shown are
    masked."""
    lines = []
    for issue in error.errors():
        message = str(issue["msg"]).removeprefix("Value error, ")
        if not issue["loc"]:
            # A rule across settings: its message names them and their values (never the whole input: secrets).
            lines.append(message)
            continue
        field = str(issue["loc"][0])
        got = issue.get("input")
        if field in NON_URL_SECRETS:
            shown = "***"
        elif field in LIST_SECRETS:
            shown = mask_url_list(got)
        else:
            shown = mask_url(str(got))
        lines.append(f"{ENV_PREFIX}{field.upper()}: {message} (got {shown!r})")
    return "; ".join(lines)


#: Settings that may carry a password: each can also be read from a file named by ``SEQPROC_<NAME>_FILE``
#: (Docker and Kubernetes secrets), so that the secret never sits in the environment or on a command line.
SECRET_FIELDS = (
    "database_url",
    "outbox_database_url",
    "broker_url",
    "result_backend",
    "flower_basic_auth",
    "lock_urls",
)
#: Secrets that are not URLs: masked whole (``mask_url`` would not find their password).
NON_URL_SECRETS = ("flower_basic_auth",)
#: Secrets that are lists of URLs: masked entry by entry.
LIST_SECRETS = ("lock_urls",)


def secrets_from_files(environ: Mapping[str, str]) -> dict[str, str]:
    """The values of ``SEQPROC_<NAME>_FILE`` files: their content, stripped. A missing or unreadable file is an
    error naming the variable (never the content)."""
    found = {}
    for field in SECRET_FIELDS:
        variable = f"{ENV_PREFIX}{field.upper()}_FILE"
        path = environ.get(variable)
        if not path:
            continue
        try:
            found[field] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"{variable}: cannot read {path!r}: {error.strerror}") from None
    return found


#: ``SEQPROC_*`` variables that are not settings but are read by seqproc's own tools: the test suite's service
#: locations, the fault tests' injections (``worker/faults.py``), the benchmark's folder (``seqproc bench``), the
#: Django app's database alias, and the image name of ``docker-compose.yml``. Names ending in ``_`` are prefixes.
OTHER_VARIABLES = (
    f"{ENV_PREFIX}TEST_",
    f"{ENV_PREFIX}FAULT_",
    f"{ENV_PREFIX}BENCH_DIR",
    f"{ENV_PREFIX}DJANGO_DATABASE",
    f"{ENV_PREFIX}IMAGE",
)
_WARNED: set[str] = set()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``SEQPROC_*`` variable of ``environ`` that no setting reads (a misspelling is ignored
    silently otherwise), naming the closest setting."""
    settings = [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]
    known = {*settings, *(f"{ENV_PREFIX}{field.upper()}_FILE" for field in SECRET_FIELDS)}
    lines = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        if any(name == other or (other.endswith("_") and name.startswith(other)) for other in OTHER_VARIABLES):
            continue
        base = name.removesuffix("_FILE")
        if name.endswith("_FILE") and base in settings:
            lines.append(
                f"{name} is ignored: only the settings that hold a secret can be read from a file "
                f"({', '.join(f'{ENV_PREFIX}{field.upper()}_FILE' for field in SECRET_FIELDS)})"
            )
            continue
        closest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        hint = f"did you mean {closest[0]}?" if closest else "`seqproc settings` lists the settings"
        lines.append(f"{name} is not a seqproc setting and is ignored; {hint}")
    return lines


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Log :func:`unknown_variables`'s lines, each once per process."""
    for line in unknown_variables(environ):
        if line not in _WARNED:
            _WARNED.add(line)
            logger.warning("%s", line)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (and ``*_FILE`` secrets); raise :class:`ConfigError` with one clear
    line if one is bad. A ``SEQPROC_*`` variable that no setting reads gets a warning naming the closest one."""
    warn_unknown_variables(os.environ)
    try:
        return Settings(**(secrets_from_files(os.environ) | overrides))
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()`` after changing the env."""
    return load_settings()
