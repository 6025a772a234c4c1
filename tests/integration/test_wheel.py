"""The built wheel, installed (not editable) into a fresh venv, used from a user's project folder.

The wheel is built once per module from a copy of the working tree and must hold one top-level import name,
``seqproc``, with its Alembic migrations as package data. A user's project folder holding modules with generic names
(``models``, ``worker``, ``producer``, ``celeryconfig``, ``migrations``, ``bench``), on ``sys.path`` and as the
working directory, changes nothing: ``seqproc migrate``, a ``seqproc worker`` of that venv and ``seqproc.like(...)``
work against the real PostgreSQL and Redis, and none of the user's modules is ever imported by seqproc (each one
logs its import to a file the test reads).

Services used here, and by no other test: the PostgreSQL database ``seqproc_wheel`` (created by ``seqproc migrate``,
dropped at the end) and Redis databases 7 and 8 (emptied before and after).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, make_url, text

from seqproc.models.db import can_connect
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL, require, wait_for

ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 300
COMMAND_TIMEOUT_S = 120

WHEEL_DATABASE = "seqproc_wheel"
BROKER_DB, RESULTS_DB = 7, 8  # conftest uses 9 and 10, the benchmark 12 to 14

#: Names a user's project commonly has at its top level; seqproc must import none of them.
GENERIC = ("worker", "producer", "models", "migrations", "celeryconfig", "bench")
#: Left out of the copy the wheel is built from: what is not part of the source (as git would see it).
NOT_SOURCE = (
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    "build",
    "dist",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
)
#: Pip's words for "the package index did not answer" (not for a broken build).
OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Could not find a version that satisfies the requirement",
    "No matching distribution found",
)

#: Imports every room of the package and the command line, then reports what the process holds.
INSPECT = """
import importlib.metadata, json, sys, sysconfig
import seqproc, seqproc.worker.cli, seqproc.migrations, seqproc.models.celery, seqproc.worker.app
import seqproc.worker.tasks, seqproc.worker.runner
from seqproc.models.celery import celery_config
from seqproc.models.settings import get_settings
celery_config(get_settings())
dist = importlib.metadata.distribution("seqproc")
print(json.dumps({
    "seqproc": seqproc.__file__,
    "purelib": sysconfig.get_paths()["purelib"],
    "generic": sorted(n for n in GENERIC_NAMES if n in sys.modules),
    "files": [str(f) for f in dist.files or []],
    "direct_url": json.loads(dist.read_text("direct_url.json") or "{}"),
}))
""".replace("GENERIC_NAMES", repr(GENERIC))

#: What a user's application does; then it checks that its own ``models`` is the one it gets.
LIKE = """
import json, os, sys
import seqproc
outcome = seqproc.like(1, 2).wait(timeout_s=30)
generic = sorted(n for n in GENERIC_NAMES if n in sys.modules)
import models
print(json.dumps({
    "status": outcome.status,
    "pid": os.getpid(),
    "generic_before_import": generic,
    "models": models.__file__,
    "article": models.Article.__module__,
    "errors": models.errors,
    "seqproc": seqproc.__file__,
}))
""".replace("GENERIC_NAMES", repr(GENERIC))


def run(
    args: list[str | Path], *, timeout_s: float = COMMAND_TIMEOUT_S, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout_s, **kwargs)


def pip_failed(what: str, done: subprocess.CompletedProcess[str]) -> None:
    """Fail on a failed pip run; skip (or fail under CI, through ``require``) when the package index is unreachable."""
    output = done.stdout + done.stderr
    if any(sign in output for sign in OFFLINE):
        require(False, f"the package index ({what}: {output.strip().splitlines()[-1]})")
    pytest.fail(f"{what} failed ({done.returncode}):\n{output[-5000:]}")


def logs_import(name: str, log: Path) -> str:
    """Source of a user's module that appends ``name pid`` to ``log`` when imported."""
    return f"import os as _os\nwith open({str(log)!r}, 'a') as _f:\n    _f.write(f'{name} {{_os.getpid()}}\\n')\n"


def imports_logged(log: Path) -> list[tuple[str, int]]:
    if not log.exists():
        return []
    return [(name, int(pid)) for name, pid in (line.split() for line in log.read_text().splitlines())]


def user_project(folder: Path, *, packages: bool) -> Path:
    """A user's project folder whose top-level names would shadow generic ones; returns its import log."""
    log = folder.parent / f"{folder.name}-imports.log"
    folder.mkdir()
    files = {
        "celeryconfig": 'broker_url = "memory://"\nresult_backend = "cache+memory://"\n',
        "models": 'class Article:\n    id: int\n\n\nerrors = ["the user\'s own errors"]\n',
        "worker": 'def main():\n    raise SystemExit("the user\'s worker")\n',
        "producer": 'def like(*args, **kwargs):\n    raise RuntimeError("the user\'s producer")\n',
    }
    for name, body in files.items():
        path = folder / name / "__init__.py" if packages else folder / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(logs_import(name, log) + body)
    if packages:  # submodules with the names of seqproc's own
        (folder / "models" / "errors.py").write_text(logs_import("models.errors", log))
        (folder / "models" / "settings.py").write_text(logs_import("models.settings", log))
        (folder / "worker" / "cli.py").write_text(
            logs_import("worker.cli", log) + "def main():\n    raise SystemExit(1)\n"
        )
    (folder / "migrations" / "versions").mkdir(parents=True)
    (folder / "migrations" / "__init__.py").write_text(logs_import("migrations", log))
    (folder / "migrations" / "env.py").write_text(
        logs_import("migrations.env", log) + "raise RuntimeError('user env')\n"
    )
    (folder / "migrations" / "script.py.mako").write_text("# the user's template\n")
    (folder / "bench").mkdir()
    (folder / "bench" / "__init__.py").write_text(logs_import("bench", log))
    return log


def venv_env(venv: Path, project: Path, **extra: str) -> dict[str, str]:
    """This environment without seqproc settings or Python paths of the test run; the project on PYTHONPATH."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV", "CELERY_CONFIG_MODULE"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQPROC_") and k not in dropped}
    env.update(
        PYTHONPATH=str(project),
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PYTHONDONTWRITEBYTECODE="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the working tree (a build never writes into the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = base / "dist"
    # An isolated build: the build requirements of pyproject.toml (setuptools>=68), whatever the dev venv holds.
    done = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", out, source],
        timeout_s=BUILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        pip_failed("building the wheel", done)
    wheels = list(out.glob("seqproc-*.whl"))
    assert len(wheels) == 1, (wheels, done.stdout[-3000:])
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the wheel installed, as ``pip install <wheel>`` does."""
    folder = tmp_path_factory.mktemp("venv") / "venv"
    done = run([sys.executable, "-m", "venv", folder])
    assert done.returncode == 0, done.stderr
    done = run(
        [folder / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q", wheel],
        timeout_s=INSTALL_TIMEOUT_S,
    )
    if done.returncode != 0:
        pip_failed("installing the wheel", done)
    return folder


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, str]]:
    """The settings of the wheel's processes: a database and two Redis databases of this module's own."""
    database_url = make_url(TEST_DATABASE_URL).set(database=WHEEL_DATABASE).render_as_string(hide_password=False)
    admin_url = make_url(TEST_DATABASE_URL).set(database="postgres").render_as_string(hide_password=False)
    require(can_connect(admin_url), f"PostgreSQL ({admin_url})")
    try:
        redis_ok = bool(redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        redis_ok = False
    require(redis_ok, f"Redis ({TEST_REDIS_URL})")
    settings = {
        "SEQPROC_DATABASE_URL": database_url,
        "SEQPROC_BROKER_URL": f"{TEST_REDIS_URL}/{BROKER_DB}",
        "SEQPROC_RESULT_BACKEND": f"{TEST_REDIS_URL}/{RESULTS_DB}",
    }
    redis_urls = (settings["SEQPROC_BROKER_URL"], settings["SEQPROC_RESULT_BACKEND"])

    def clean() -> None:
        drop_database(database_url)  # seqproc migrate creates it
        for url in redis_urls:
            redis.Redis.from_url(url).flushdb()

    clean()
    yield settings
    clean()


def test_wheel_holds_only_the_seqproc_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = {
            n.split("/", 1)[1]: archive.read(n).decode() for n in names if n.split("/")[0].endswith(".dist-info")
        }
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"seqproc"}
    assert metadata["top_level.txt"].split() == ["seqproc"]
    assert "seqproc = seqproc.worker.cli:main" in metadata["entry_points.txt"]
    for needed in (
        "seqproc/__init__.py",
        "seqproc/__main__.py",
        "seqproc/py.typed",
        "seqproc/migrations/env.py",
        "seqproc/migrations/script.py.mako",
        "seqproc/migrations/versions/0001_initial_schema.py",
    ):
        assert needed in names, needed
    for name in names:
        parts = name.split("/")
        assert not {"bench", "tests", "examples", "__pycache__"} & set(parts), name
        assert parts[-1] != "celeryconfig.py", name
        assert not name.endswith(".pyc"), name
    # Every file of the package in the checkout (through its symlinked rooms) is in the wheel.
    package = ROOT / "seqproc"
    in_checkout = {
        f"seqproc/{(Path(d) / f).relative_to(package).as_posix()}"
        for d, dirs, files in os.walk(package, followlinks=True)
        if "__pycache__" not in Path(d).parts
        for f in files
        if not f.endswith(".pyc")
    }
    assert in_checkout - set(names) == set()
    assert {n for n in names if n.startswith("seqproc/migrations/versions/")} == {
        n for n in in_checkout if n.startswith("seqproc/migrations/versions/")
    }


def test_installed_wheel_puts_one_import_name_in_site_packages(venv: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    log = user_project(project, packages=False)
    done = run([venv / "bin" / "python", "-c", INSPECT], cwd=project, env=venv_env(venv, project))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert Path(found["seqproc"]).is_relative_to(found["purelib"])  # the venv's copy, not the checkout
    assert Path(found["purelib"]).is_relative_to(venv)
    assert "dir_info" not in found["direct_url"]  # installed from the wheel, not editable
    top = {f.split("/")[0] for f in found["files"] if not f.startswith("..")}
    assert {t for t in top if not t.endswith(".dist-info")} == {"seqproc"}
    assert found["generic"] == []
    assert imports_logged(log) == []
    installed = {p.name for p in Path(found["purelib"]).iterdir() if p.name.split("-")[0].split(".")[0] == "seqproc"}
    assert {n for n in installed if not n.endswith(".dist-info")} == {"seqproc"}


@pytest.mark.services
def test_like_from_a_user_project_applied_by_the_wheels_worker(
    venv: Path, services: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    log = user_project(project, packages=False)
    env = venv_env(venv, project, **services)
    seqproc, python = venv / "bin" / "seqproc", venv / "bin" / "python"

    for command in ([python, "-m", "seqproc", "--help"], [seqproc, "--help"]):
        done = run(command, cwd=project, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "worker" in done.stdout
        assert "migrate" in done.stdout

    done = run([seqproc, "migrate"], cwd=project, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "migrated" in done.stdout
    head = run(
        [
            python,
            "-c",
            "from alembic.script import ScriptDirectory as S; from seqproc.migrations import alembic_config"
            " as c; print(S.from_config(c('sqlite://')).get_current_head())",
        ],
        cwd=project,
        env=env,
    )
    assert head.returncode == 0, head.stderr[-2000:]
    engine = create_engine(services["SEQPROC_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head.stdout.strip()

        ready = tmp_path / "worker.ready"
        worker_log = tmp_path / "worker.log"
        with worker_log.open("wb") as out:
            worker = subprocess.Popen(
                [str(seqproc), "worker", "--partitions", "all", "--loglevel", "INFO", "--ready-file", str(ready)],
                cwd=project,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(lambda: ready.exists() or worker.poll() is not None, 60, "the wheel's worker ready")
            assert worker.poll() is None, f"worker exited {worker.returncode}:\n{worker_log.read_text()[-3000:]}"

            done = run([python, "-c", LIKE], cwd=project, env=env)
            assert done.returncode == 0, done.stderr[-3000:] + worker_log.read_text()[-3000:]
            found = json.loads(done.stdout)
            assert found["status"] == "applied"
            assert found["generic_before_import"] == []
            assert found["models"] == str(project / "models.py")
            assert (found["article"], found["errors"]) == ("models", ["the user's own errors"])
            assert Path(found["seqproc"]).is_relative_to(venv)
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT article_id, user_id FROM article_like")).all()
            assert [tuple(r) for r in rows] == [(1, 2)]
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
                raise
        assert code == 0, worker_log.read_text()[-3000:]
        assert not ready.exists()  # removed at exit
    finally:
        engine.dispose()
    # Only the user's application imported a module of the user's: seqproc never did, in any of its processes.
    assert imports_logged(log) == [("models", found["pid"])]


@pytest.mark.services
def test_user_packages_with_seqprocs_room_names_change_nothing(
    venv: Path, services: dict[str, str], tmp_path: Path
) -> None:
    """The same names as packages (``models/errors.py``, ``worker/cli.py``, ...), cwd and PYTHONPATH."""
    project = tmp_path / "project"
    log = user_project(project, packages=True)
    env = venv_env(venv, project, **services)
    python = venv / "bin" / "python"
    done = run([python, "-c", INSPECT], cwd=project, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["generic"] == []
    for command in ([python, "-m", "seqproc", "--help"], [python, "-m", "seqproc", "migrate"]):
        done = run(command, cwd=project, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert imports_logged(log) == []
