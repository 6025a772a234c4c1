"""Fixtures shared by the suites.

Service tests talk to the real PostgreSQL and Redis of the machine: a database of their own (``seqproc_test``,
migrated down and up once per session) and Redis databases 9 and 10, emptied before each test. A missing service
or program skips those tests on a developer's machine and fails them when ``CI`` is set (``require``,
``require_tools``); with ``CI`` set, a run that reports any skip but the named soak variants fails (``SkipAudit``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import settings
from kombu import Connection
from sqlalchemy import Engine, text

from seqproc import producer
from seqproc.models.db import can_connect, ensure_database, make_engine
from seqproc.models.settings import Settings
from seqproc.models.tables import Base
from seqproc.models.tables.outbox import OutboxBase
from seqproc.worker.processes import settings_env

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE_URL = os.environ.get(
    "SEQPROC_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/seqproc_test"
)
TEST_REDIS_URL = os.environ.get("SEQPROC_TEST_REDIS_URL", "redis://127.0.0.1:6379")
BROKER_DB, RESULTS_DB = 9, 10

#: Tables of the deployment, not of any event's effect: kept between tests (running workers hold epochs in
#: ``partition``, heartbeats in ``seqproc_worker``; the outbox's id keys its relays' counters in the broker; the test
#: process's publishers go on numbering their events from test to test: ``seqproc_producer_sequence``).
DEPLOYMENT_TABLES = frozenset(
    {"partition", "seqproc_meta", "seqproc_worker", "seqproc_outbox_meta", "seqproc_producer_sequence"}
)
#: Tables emptied between tests: every table of seqproc's metadata (the outbox's included) but the deployment's.
DATA_TABLES = tuple(
    table.name
    for metadata in (Base.metadata, OutboxBase.metadata)
    for table in metadata.sorted_tables
    if table.name not in DEPLOYMENT_TABLES
)


#: Why the long variants are skipped unless ``--soak`` is given.
SOAK_REASON = "long variant: run with --soak (make soak)"
#: The long variants (marked ``slow``) that only ``make soak`` runs: the only skips a CI run may report, named one
#: by one, so that every skip in CI is a decision written down here, never a missing binary or service.
_PG_WIRE = "tests/faults/test_pg_wire_faults.py::"
_SENTINEL = "tests/faults/test_sentinel.py::"
_WIRE = "tests/faults/test_wire_faults.py::"
SOAK_VARIANTS = frozenset(
    {
        "tests/faults/test_kill.py::test_sigkills_lose_and_double_nothing[60-kills]",
        "tests/faults/test_cluster_model.py::test_any_stream_on_a_cluster_ends_as_the_model_says_long",
        *(
            f"{_PG_WIRE}test_a_database_connection_gone_half_open_is_noticed_by_the_deadline_and_the_stream_recovers"
            f"[{directions}-{path}]"
            for directions in ("up", "down")
            for path in ("worker", "relay")
        ),
        f"{_PG_WIRE}test_a_worker_whose_database_stays_half_open_past_its_lease_takes_its_partitions_back",
        *(
            f"{_PG_WIRE}test_a_slow_database_link_times_out_only_past_the_deadline[past-the-deadline-{path}]"
            for path in ("worker", "relay")
        ),
        *(
            f"{_SENTINEL}test_sentinel_primary_sigkill_loses_no_outbox_event[{replica}]"
            for replica in ("caught_up", "behind")
        ),
        *(
            f"{_WIRE}test_a_worker_whose_broker_goes_half_open_notices_reconnects_and_loses_nothing[{variant}]"
            for variant in ("up", "both-defaults")
        ),
        *(
            f"{_SENTINEL}test_sentinel_primary_sigkill_direct_events_are_never_doubled_or_reordered_and_every_loss_is_"
            f"counted[{replica}-async]"
            for replica in ("caught_up", "behind")
        ),
    }
)


# Hypothesis profiles; ``--hypothesis-profile NAME`` chooses another. The domain property cases
# (``tests.domain_properties.PROPERTY_SETTINGS``, on SQLite and on PostgreSQL) run the profile's ``max_examples``;
# every other property test states its count beside it. Settings objects copy the profile in force when they are
# made, so it is loaded here, before any test module is imported.
#: CI: 40 examples per domain property case, derandomized (drawn from a seed fixed by each test's source: a red run
#: is red again on a rerun and on a developer's machine), no example database, the reproducing blob printed.
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, print_blob=True)
#: A developer's run: 40 examples per domain property case, new ones each run (failures replayed from .hypothesis).
settings.register_profile("dev", max_examples=40)
#: ``make soak``: 200 examples per domain property case, new ones each run.
settings.register_profile("soak", max_examples=200, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long fault and soak variants")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI"):
        config.pluginmanager.register(SkipAudit(), "seqproc-skip-audit")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason=SOAK_REASON)
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class SkipAudit:
    """With ``CI`` set, a run that skipped anything but a named soak variant (:data:`SOAK_VARIANTS`) fails, and says
    which tests skipped and why: a CI machine without a binary or service must not stay green by skipping."""

    def __init__(self) -> None:
        #: node id -> why it was skipped, for every skip not allowed.
        self.unexpected: dict[str, str] = {}

    def _note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if report.nodeid in SOAK_VARIANTS and reason.removeprefix("Skipped: ") == SOAK_REASON:
            return
        self.unexpected[report.nodeid] = reason

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)  # a whole module skipped (pytest.importorskip, a module-level skip)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.unexpected:
            return
        terminalreporter.section("skipped with CI set", sep="=", red=True, bold=True)
        terminalreporter.line(
            f"{len(self.unexpected)} test(s) skipped although CI is set (only the soak variants in "
            "tests/conftest.py SOAK_VARIANTS may skip): the run fails"
        )
        for nodeid, reason in sorted(self.unexpected.items()):
            terminalreporter.line(f"SKIPPED IN CI {nodeid}: {reason}")


def require(available: bool, what: str, *, problem: str = "is not reachable") -> None:
    """Skip without the service; fail instead when CI is set (a CI run must not pass by skipping)."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} {problem} and CI is set: tests behind a guarantee must run in CI")
    pytest.skip(f"{what} {problem}")


def require_tools(*tools: str) -> None:
    """Skip without these programs; fail instead when CI is set (``make tools``, run by ``make test`` and CI,
    installs them)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    verb = "is" if len(missing) == 1 else "are"
    require(not missing, " and ".join(missing), problem=f"{verb} not installed (make tools installs it)")


@pytest.fixture(scope="session")
def pg_url() -> str:
    ensure_database(TEST_DATABASE_URL)
    require(can_connect(TEST_DATABASE_URL), f"PostgreSQL ({TEST_DATABASE_URL})")
    from alembic import command
    from alembic.util.exc import CommandError

    from seqproc.migrations import alembic_config, migrate, migrate_outbox, outbox_alembic_config

    # Down and up again: the tests run the migrations (both ways), never create_all.
    try:
        engine = make_engine(TEST_DATABASE_URL)
        with engine.begin() as conn:
            config = outbox_alembic_config(TEST_DATABASE_URL)
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        engine.dispose()
        command.downgrade(alembic_config(TEST_DATABASE_URL), "base")
    except CommandError:
        # The test database was migrated by a checkout with a revision this one does not have (another branch):
        # it is ours to throw away, so start it from nothing rather than fail every service test.
        engine = make_engine(TEST_DATABASE_URL)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    migrate(TEST_DATABASE_URL)
    migrate_outbox(TEST_DATABASE_URL)
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def redis_base() -> str:
    try:
        ok = bool(redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        ok = False
    require(ok, f"Redis ({TEST_REDIS_URL})")
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def service_settings(pg_url: str, redis_base: str) -> Settings:
    return Settings(
        database_url=pg_url,
        broker_url=f"{redis_base}/{BROKER_DB}",
        result_backend=f"{redis_base}/{RESULTS_DB}",
        partitions=16,
        publish_timeout_s=5,
        visibility_timeout_s=20,
        restore_interval_s=2,
        task_events=False,
    )


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


def reset_state(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(DATA_TABLES)}"))
    for url in (settings.broker_url, settings.result_backend):
        redis.Redis.from_url(url).flushdb()


@pytest.fixture
def clean(engine: Engine, service_settings: Settings) -> Iterator[Settings]:
    """A clean database and Redis namespace, and the producer pointed at them."""
    reset_state(engine, service_settings)
    producer.configure(service_settings)
    yield service_settings
    producer.configure(None)


class LoggedProcess:
    """A process of the tests (``python -m <argv>`` from the repository's root, with ``settings``' environment), its
    output in a log file: the one base of the workers, relays, beats, Flower and uvicorn the tests start.

    ``session``: in a session of its own, so that its signals reach its children too (a beat's scheduler)."""

    #: What it is, in failure messages.
    what = "process"

    def __init__(
        self, argv: Sequence[str], settings: Settings, log_path: Path, *, session: bool = False, **env: str
    ) -> None:
        self.log_path = log_path
        self.session = session
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=ROOT,
            env=settings_env(settings, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=session,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(
        self, condition: Callable[[], Any], timeout_s: float, what: str, *, interval_s: float = 0.05
    ) -> None:
        """Poll ``condition`` until it holds; fail with the log's tail if the process exits first."""
        wait_for(lambda: self.process.poll() is not None or condition(), timeout_s, what, interval_s=interval_s)
        if self.process.poll() is not None:
            raise AssertionError(f"{self.what} exited with {self.process.returncode}:\n{self.log()[-3000:]}")

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            if self.session:
                os.killpg(self.process.pid, signum)
            else:
                os.kill(self.process.pid, signum)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL if it is still running after ``timeout_s``; its exit code."""
        try:
            if self.process.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    return self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    return self.process.wait(10)
            if self.session:
                with contextlib.suppress(ProcessLookupError):  # a child may outlive its dead parent
                    os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.returncode
        finally:
            self._log.close()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(10)


class WorkerProcess(LoggedProcess):
    """A real ``seqproc worker`` process, its output in a log file."""

    what = "worker"

    def __init__(self, settings: Settings, partitions: str, log_dir: Path, **env: str) -> None:
        self.partitions = partitions
        log_path = log_dir / f"worker-{partitions.replace(',', '_')}-{time.monotonic_ns()}.log"
        argv = ["seqproc", "worker", "--partitions", partitions, "--loglevel", "INFO"]
        super().__init__(argv, settings, log_path, **env)

    def wait_ready(self, timeout_s: float = 30) -> WorkerProcess:
        self.wait_until(lambda: " ready." in self.log(), timeout_s, "worker ready")
        return self


class RelayProcess(LoggedProcess):
    """A real ``seqproc relay`` process (its ready file written once it runs), its output in a log file."""

    what = "relay"

    def __init__(self, settings: Settings, log_dir: Path, **env: str) -> None:
        self.partitions = "relay"
        self.ready_file = log_dir / f"relay-{time.monotonic_ns()}.ready"
        argv = ["seqproc", "relay", "--loglevel", "INFO", "--ready-file", str(self.ready_file)]
        super().__init__(argv, settings, log_dir / f"relay-{time.monotonic_ns()}.log", **env)

    def wait_ready(self, timeout_s: float = 30) -> RelayProcess:
        self.wait_until(self.ready_file.exists, timeout_s, "relay ready")
        return self


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start real relay processes; every one is stopped at the end of the test."""
    started: list[RelayProcess] = []

    def start(settings: Settings, *, ready: bool = True, **env: str) -> RelayProcess:
        relay = RelayProcess(settings, tmp_path, **env)
        started.append(relay)
        return relay.wait_ready() if ready else relay

    yield start
    for relay in started:
        if relay.process.poll() is None:
            relay.stop()


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, *, interval_s: float = 0.05) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes; every one is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, partitions: str = "0-15", *, ready: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(settings, partitions, tmp_path, **env)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A server's certificate and key, and the CA that signed it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


class PrivateRedis:
    """A redis-server of the test's own on a loopback port, with append-only persistence, that it may restart.

    With ``tls``, that port speaks TLS only (no plain port) and ``url`` gives ``rediss://`` URLs that verify the
    server against ``tls.ca``."""

    def __init__(
        self, directory: Path, *, persistent: bool = True, tls: TlsFiles | None = None, fsync: str = "always"
    ) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.tls = tls
        #: ``appendfsync``: ``always`` keeps every write; ``everysec`` (production's) may lose the last second's.
        self.fsync = fsync
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "no",
            ]
        self.process = subprocess.Popen(
            [
                "redis-server",
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                self.fsync,
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url(0), socket_connect_timeout=2, socket_timeout=2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError):
                return False

        wait_for(up, 10, "the private redis-server")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a clean shutdown: the append-only file is complete
            self.process.wait(10)

    def url(self, db: int) -> str:
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/{db}"
        return f"rediss://127.0.0.1:{self.port}/{db}?ssl_cert_reqs=required&ssl_ca_certs={quote(str(self.tls.ca))}"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    require_tools("redis-server")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """Start private redis-servers (:class:`PrivateRedis`'s options, each in a folder of its own); every one is
    stopped at the end of the test. Ask for it before ``start_worker`` and ``start_relay``: fixtures are torn down
    in the reverse order, so their processes stop while the Redis they use still answers (a worker stopped on a
    Redis already gone waits out its client's retries first, about 8 s)."""
    require_tools("redis-server")
    started: list[PrivateRedis] = []

    def start(**options: Any) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(started)}", **options)
        server.directory.mkdir()
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Redis clients this process makes from now on still try a command ``DEFAULT_RETRIES`` more times, with
    pauses of 10-20 ms instead of 0.25 s doubling to 2 s (5.7 s in all): for tests about what follows once the tries
    are spent on a Redis that is gone, not about the pauses. Processes the test starts keep the real pauses."""
    from seqproc.models import clients

    monkeypatch.setattr(clients, "RETRY_BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(clients, "RETRY_BACKOFF_CAP_S", 0.02)


def publish_raw(settings: Settings, queue: str, body: bytes | str, content_type: str, headers: dict[str, Any]) -> None:
    """Put a message on ``queue`` as any client could: whatever body, content type and headers."""
    with Connection(settings.broker_url) as conn:
        conn.Producer().publish(
            body,
            routing_key=queue,
            exchange="",
            content_type=content_type,
            content_encoding="binary" if isinstance(body, bytes) else "utf-8",
            headers=headers,
            declare=[],
        )
