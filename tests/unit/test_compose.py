"""The deployment contract of docker-compose.yml and the Dockerfile, read as files (no Docker needed)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from seqproc.models.clients import ClusterUrl
from seqproc.models.settings import load_settings
from seqproc.worker.cli import cli
from seqproc.worker.ops.flower import flower_argv
from seqproc.worker.ownership.partitions import parse_partitions
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

REQUIRED_SERVICES = {"postgres", "redis", "migrate", "worker-a", "worker-b", "relay", "beat", "flower"}
ONE_SHOT_SERVICES = {"migrate"}
LONG_RUNNING_RESTART = {"always", "unless-stopped", "on-failure"}


def _load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE.get("services") or {}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _interpolate_defaults(value: str) -> str:
    """``${VAR:-default}`` -> ``default``: what Compose substitutes when the variable is unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def _option(command: list[str], name: str) -> str:
    assert name in command, f"{command} has no {name}"
    index = command.index(name)
    assert index + 1 < len(command), f"{name} has no value in {command}"
    return command[index + 1]


def _seqproc_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in SERVICES.items() if _command(svc)[:1] == ["seqproc"]}


def _worker_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in SERVICES.items() if _command(svc)[:2] == ["seqproc", "worker"]}


def _seconds(duration: str | int) -> float:
    """Compose durations: ``30s``, ``1m30s``, ``500ms``, or a bare number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test", "")
    return " ".join(test) if isinstance(test, list) else str(test)


def test_every_service_is_defined() -> None:
    assert set(SERVICES) >= REQUIRED_SERVICES, f"missing: {sorted(REQUIRED_SERVICES - set(SERVICES))}"


def test_redis_keeps_the_queued_events_on_disk() -> None:
    redis = SERVICES["redis"]
    command = _command(redis)
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") in ("everysec", "always")
    assert any(str(volume).endswith(":/data") for volume in redis.get("volumes", [])), "Redis /data is not a volume"


def test_migrate_is_a_one_shot_run_of_seqproc_migrate() -> None:
    migrate = SERVICES["migrate"]
    assert _command(migrate) == ["seqproc", "migrate"]
    # The string "no": an unquoted `no` is YAML false, which Compose rejects.
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize(("service", "spec"), [("worker-a", "0-7"), ("worker-b", "8-15")])
def test_worker_partition_sets(service: str, spec: str) -> None:
    command = _command(SERVICES[service])
    assert command[:2] == ["seqproc", "worker"]
    assert _option(command, "--partitions") == spec


def test_workers_own_every_partition_exactly_once() -> None:
    workers = _worker_services()
    assert set(workers) >= {"worker-a", "worker-b"}
    totals = {int(_environment(svc)["SEQPROC_PARTITIONS"]) for svc in workers.values()}
    assert totals == {16}, f"workers disagree on SEQPROC_PARTITIONS: {totals}"
    total = totals.pop()
    owned: Counter[int] = Counter()
    for svc in workers.values():
        # An explicit set each: a worker without --partitions would own all of them.
        owned.update(parse_partitions(_option(_command(svc), "--partitions"), total))
    assert sorted(owned) == list(range(total)), f"unowned: {sorted(set(range(total)) - set(owned))}"
    assert not [p for p, n in owned.items() if n > 1], f"owned twice: {sorted(p for p, n in owned.items() if n > 1)}"


@pytest.mark.parametrize("service", ["worker-a", "worker-b"])
def test_workers_start_after_migration_and_redis(service: str) -> None:
    depends_on = SERVICES[service]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["worker-a", "worker-b"])
def test_workers_have_time_for_a_warm_shutdown_and_a_healthcheck(service: str) -> None:
    worker = SERVICES[service]
    assert _seconds(worker.get("stop_grace_period", "10s")) >= 30
    assert _healthcheck_text(worker), f"{service} has no healthcheck"


def _published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host side, container port) of each published port, with Compose's defaults substituted."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((f"{port.get('host_ip', '')}:{port.get('published', '')}", int(port["target"])))
        else:
            host, _, target = _interpolate_defaults(str(port)).rpartition(":")
            out.append((host, int(target.split("/")[0])))
    return out


def _settings_of(service: dict[str, Any]) -> Any:
    env = _environment(service)
    return load_settings(
        **{
            key.removeprefix("SEQPROC_").lower(): _interpolate_defaults(value)
            for key, value in env.items()
            if key.startswith("SEQPROC_")
        }
    )


def test_flower_publishes_port_5555_behind_basic_auth() -> None:
    flower = SERVICES["flower"]
    assert _command(flower)[:2] == ["seqproc", "flower"]
    assert 5555 in [target for _, target in _published(flower)]
    settings = _settings_of(flower)
    assert settings.flower_basic_auth, "Flower has no basic auth"
    # What `seqproc flower` will run in that container: it binds every interface, so auth must be on.
    argv = flower_argv(settings, 5555, settings.flower_address)
    assert "--address=0.0.0.0" in argv
    assert any(arg.startswith("--basic-auth=") for arg in argv)


def test_every_worker_publishes_its_metrics_on_its_own_host_port() -> None:
    host_sides = []
    for name, worker in _worker_services().items():
        settings = _settings_of(worker)
        assert settings.metrics_port, f"{name}: SEQPROC_METRICS_PORT is not set"
        assert settings.metrics_address == "0.0.0.0", f"{name}: metrics bound inside the container only"
        published = [host for host, target in _published(worker) if target == settings.metrics_port]
        assert published, f"{name}: metrics port {settings.metrics_port} is not published"
        host_sides += published
    assert len(set(host_sides)) == len(host_sides), f"two workers publish metrics on one host port: {host_sides}"


def test_beat_runs_after_migration_with_the_database_and_redis() -> None:
    beat = SERVICES["beat"]
    assert _command(beat) == ["seqproc", "beat"]
    assert beat["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert beat["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert beat["depends_on"]["redis"]["condition"] == "service_healthy"


def test_backing_services_have_healthchecks() -> None:
    assert "pg_isready" in _healthcheck_text(SERVICES["postgres"])
    redis_check = _healthcheck_text(SERVICES["redis"])
    assert "redis-cli" in redis_check
    assert "ping" in redis_check


def _long_running() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in SERVICES.items() if name not in ONE_SHOT_SERVICES}


def _python_check(service: dict[str, Any]) -> str:
    """The code of a ``["CMD", "python", "-c", code]`` healthcheck."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"not a python -c check: {test}"
    assert len(test) == 4, f"not one piece of code: {test}"
    return str(test[3])


@pytest.mark.parametrize("name", sorted(_long_running()))
def test_every_long_running_service_has_a_healthcheck(name: str) -> None:
    # `docker compose ps` shows "running (healthy)" only for a service with a check; without one a stuck service
    # looks like a working one, and `depends_on: service_healthy` on it cannot be used.
    healthcheck = SERVICES[name].get("healthcheck") or {}
    assert not healthcheck.get("disable"), f"{name}: healthcheck disabled"
    test = healthcheck.get("test")
    assert isinstance(test, list), f"{name} has no healthcheck"
    assert len(test) >= 2, f"{name}: healthcheck test {test}"
    assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {test}"
    assert _seconds(healthcheck.get("timeout", "30s")) <= _seconds(healthcheck.get("interval", "30s"))


@pytest.mark.parametrize(
    "name", sorted(n for n, svc in _long_running().items() if _healthcheck_text(svc).startswith("CMD python -c"))
)
def test_python_healthchecks_compile_and_read_their_own_environment(name: str) -> None:
    code = _python_check(SERVICES[name])
    compile(code, f"{name} healthcheck", "exec")
    # Compose would substitute a $ in the check itself (with the host's environment), not the container's.
    assert "$" not in code
    env = _environment(SERVICES[name])
    for variable in re.findall(r"os\.environ\[['\"](\w+)['\"]\]", code):
        assert variable in env, f"{name}: the healthcheck reads {variable}, which the service does not set"


def test_beat_healthcheck_asks_the_broker() -> None:
    code = _python_check(SERVICES["beat"])
    assert "os.environ['SEQPROC_BROKER_URL']" in code
    assert ".ping()" in code


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.parametrize("url_prefix", ["", "ops/flower"])
def test_flower_healthcheck_passes_on_a_real_flower_behind_basic_auth(tmp_path: Path, url_prefix: str) -> None:
    flower = SERVICES["flower"]
    code = _python_check(flower)
    container_port = _option(_command(flower), "--port")
    assert f"http://127.0.0.1:{container_port}/" in code, "the check does not ask Flower's own port"
    # The compose service's Flower (its basic auth), on the memory transport and a free loopback port.
    port = free_port()
    env = {key: _interpolate_defaults(value) for key, value in _environment(flower).items()}
    env |= {
        "SEQPROC_BROKER_URL": "memory://localhost/",
        "SEQPROC_RESULT_BACKEND": "memory://",
        "SEQPROC_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
        "SEQPROC_FLOWER_ADDRESS": "127.0.0.1",
        "SEQPROC_FLOWER_URL_PREFIX": url_prefix,
    }
    env = dict(os.environ, **env)
    assert env["SEQPROC_FLOWER_BASIC_AUTH"]
    base = f"http://127.0.0.1:{port}/" + (f"{url_prefix}/" if url_prefix else "")
    check = code.replace(f"127.0.0.1:{container_port}/", f"127.0.0.1:{port}/")
    with (tmp_path / "flower.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "seqproc", "flower", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def listening() -> bool:
                assert process.poll() is None, (tmp_path / "flower.log").read_text(errors="replace")[-3000:]
                try:
                    _http_status(base + "workers")
                    return True
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    return False

            wait_for(listening, 30, "Flower listening", interval_s=0.2)
            # Basic auth is on: the dashboard refuses a request without credentials ...
            assert _http_status(base + "workers") == 401
            # ... and the compose healthcheck, run as Docker runs it, passes all the same.
            run = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=30)
            assert run.returncode == 0, run.stderr[-3000:]
        finally:
            process.terminate()
            process.wait(15)
    # A check that passes whatever happens would be no check: with Flower gone it fails.
    run = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode != 0


def test_long_running_services_restart() -> None:
    for name, svc in SERVICES.items():
        if name in ONE_SHOT_SERVICES:
            continue
        assert svc.get("restart") in LONG_RUNNING_RESTART, f"{name}: restart {svc.get('restart')!r}"


def test_seqproc_services_get_valid_settings() -> None:
    services = _seqproc_services()
    assert set(services) >= REQUIRED_SERVICES - {"postgres", "redis"}
    for name, svc in services.items():
        env = _environment(svc)
        for required in ("SEQPROC_DATABASE_URL", "SEQPROC_BROKER_URL"):
            assert env.get(required), f"{name} lacks {required}"
        settings = _settings_of(svc)
        assert "@postgres:5432/seqproc" in settings.database_url, f"{name}: {settings.database_url}"
        assert settings.broker_url == "redis://redis:6379/0", name
        assert settings.result_backend == "redis://redis:6379/1", name
        assert settings.partitions == 16, name


def test_dockerfile_does_not_run_as_root() -> None:
    assert DOCKERFILE.is_file()
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert any(re.fullmatch(r"FROM\s+python:3\.11-slim\b.*", line) for line in instructions)
    assert any(re.search(r"\bpip install\b.*\s\.(\s|$)", line) for line in instructions), "the project is not installed"
    users = [line.split(None, 1)[1].strip() for line in instructions if line.upper().startswith("USER ")]
    assert users, "no USER line: the container runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"runs as {users[-1]}"


COMPOSE_COMMANDS = sorted({tuple(_command(svc)[1:]) for svc in _seqproc_services().values()})


@pytest.mark.parametrize("args", COMPOSE_COMMANDS, ids=[" ".join(args) for args in COMPOSE_COMMANDS])
def test_compose_commands_exist_in_the_cli(args: tuple[str, ...]) -> None:
    assert args[0] in cli.commands
    # --help is eager: it exits 0 once every option name in `args` parsed, without running the command.
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output


SENTINEL_FILE = ROOT / "docker-compose.sentinel.yml"


def test_the_sentinel_override_points_every_seqproc_service_at_the_sentinels() -> None:
    base = _load_compose()["services"]
    override = yaml.safe_load(SENTINEL_FILE.read_text(encoding="utf-8"))["services"]
    seqproc_services = {
        name for name, service in base.items() if service.get("image", "").startswith("${SEQPROC_IMAGE")
    }
    assert seqproc_services <= set(override)
    for name in seqproc_services:
        env = override[name]["environment"]
        settings = load_settings(
            broker_url=env["SEQPROC_BROKER_URL"],
            result_backend=env["SEQPROC_RESULT_BACKEND"],
            sentinel_master=env["SEQPROC_SENTINEL_MASTER"],
        )
        assert settings.broker_url.count("sentinel://") == 3
        assert settings.broker_url.endswith("/0")
        assert settings.result_backend.endswith("/1")
    sentinels = [s for s in override if s.startswith("sentinel-")]
    assert len(sentinels) == 3  # a quorum of 2 survives the loss of one
    script = override["sentinel-1"]["entrypoint"][-1]
    assert "sentinel monitor seqproc redis 6379 2" in script
    # A failed data node must not come back by itself as a (stale) master.
    assert override["redis"]["restart"] == "no"
    assert override["redis-replica"]["restart"] == "no"
    for node in ("redis", "redis-replica"):
        command = override[node]["command"]
        assert command[command.index("--repl-diskless-sync-delay") + 1] == "0"


CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"


def test_the_cluster_file_runs_seqproc_on_three_primaries_with_a_replica_each() -> None:
    services = yaml.safe_load(CLUSTER_FILE.read_text(encoding="utf-8"))["services"]
    nodes = sorted(name for name in services if re.fullmatch(r"redis-\d+", name))
    assert len(nodes) == 6  # 3 primaries + 3 replicas
    for node in nodes:
        script = services[node]["entrypoint"][-1]
        assert "--cluster-enabled yes" in script
        assert "--appendonly yes" in script  # the broker holds events not yet applied
        # Clients are told the node's service name (what this network resolves), not a container's IP.
        assert '--cluster-announce-hostname "$$NODE"' in script
        assert "--cluster-preferred-endpoint-type hostname" in script
        assert services[node]["environment"]["NODE"] == node
        assert services[node]["healthcheck"]["test"][-1] == "ping"
    create = services["redis-cluster-create"]
    script = create["entrypoint"][-1]
    assert "redis-cli --cluster create $$nodes --cluster-replicas 1 --cluster-yes" in script
    assert all(node in script for node in nodes)
    assert "getent hosts" in script  # redis-cli --cluster create takes IP addresses only
    assert create["restart"] == "no"
    assert {name for name, dep in create["depends_on"].items() if dep["condition"] == "service_healthy"} == set(nodes)
    assert {"postgres", "migrate", "relay", "beat", "flower"} <= set(services)

    seqproc = {name: svc for name, svc in services.items() if _command(svc)[:1] == ["seqproc"]}
    for name, service in seqproc.items():
        env = _environment(service)
        settings = load_settings(
            database_url=_interpolate_defaults(env["SEQPROC_DATABASE_URL"]),
            broker_url=env["SEQPROC_BROKER_URL"],
            result_backend=env["SEQPROC_RESULT_BACKEND"],
        )
        for url in (settings.broker_url, settings.result_backend):
            seeds = ClusterUrl.parse(url).nodes
            assert {host for host, _port in seeds} <= set(nodes), (name, url)
            assert len(seeds) >= 2, (name, url)  # a seed node down does not keep a process from starting
        # Every one reaches the broker (the migration publishes the partition count there).
        assert services[name]["depends_on"]["redis-cluster-create"]["condition"] == "service_completed_successfully"
    workers = [svc for svc in seqproc.values() if _command(svc)[:2] == ["seqproc", "worker"]]
    total = int(workers[0]["environment"]["SEQPROC_PARTITIONS"])
    owned = [p for svc in workers for p in parse_partitions(_option(_command(svc), "--partitions"), total)]
    assert sorted(owned) == list(range(total))  # every partition exactly once
    for service in seqproc.values():
        healthcheck = service.get("healthcheck")
        if healthcheck and healthcheck["test"][:2] == ["CMD", "python"]:
            compile(healthcheck["test"][-1], "healthcheck", "exec")
