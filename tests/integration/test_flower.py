"""``seqproc flower``: a real worker and a real Flower process; Flower's HTTP API shows the worker and its tasks."""

from __future__ import annotations

import ast
import base64
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from seqproc import producer
from seqproc.models.settings import Settings
from tests.conftest import ROOT, LoggedProcess, WorkerProcess, free_port, settings_env, wait_for

pytestmark = pytest.mark.services

USER, PASSWORD = "ops", "fl0wer-t3st-pw"
APPLY_TASK = "seqproc.apply"


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body); 0 when nothing answers."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


class FlowerProcess(LoggedProcess):
    """``python -m seqproc flower`` in a process of its own, its output in a log file."""

    what = "flower"

    def __init__(self, settings: Settings, log_dir: Path, *args: str, **env: str) -> None:
        self.port = free_port()
        argv = ["seqproc", "flower", "--port", str(self.port), *args]
        super().__init__(argv, settings, log_dir / f"flower-{self.port}.log", **env)

    def wait_answering(self, path: str, timeout_s: float = 30) -> None:
        def answers() -> bool:
            return http_get(f"http://127.0.0.1:{self.port}{path}")[0] == 200

        self.wait_until(answers, timeout_s, f"Flower answering on {path}", interval_s=0.2)

    def stop(self, timeout_s: float = 15) -> int:
        return super().stop(timeout_s)


@pytest.fixture
def start_flower(tmp_path: Path) -> Iterator[Callable[..., FlowerProcess]]:
    started: list[FlowerProcess] = []

    def start(settings: Settings, *args: str, **env: str) -> FlowerProcess:
        flower = FlowerProcess(settings, tmp_path, *args, **env)
        started.append(flower)
        return flower

    yield start
    for flower in started:
        flower.stop()


def api(flower: FlowerProcess, path: str, prefix: str = "") -> Any:
    status, body = http_get(f"http://127.0.0.1:{flower.port}{prefix}{path}", (USER, PASSWORD))
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def test_flower_lists_the_workers_and_their_tasks(
    clean: Settings, start_worker: Callable[..., WorkerProcess], start_flower: Callable[..., FlowerProcess]
) -> None:
    settings = clean.model_copy(update={"task_events": True})
    worker = start_worker(settings)
    # The node name `seqproc worker --partitions 0-15` takes: unique per process.
    node = f"seqproc-p0-15-{worker.pid}@{socket.gethostname()}"
    prefix = "/ops/flower"
    flower = start_flower(
        settings, SEQPROC_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}", SEQPROC_FLOWER_URL_PREFIX=prefix.strip("/")
    )
    flower.wait_answering(f"{prefix}/healthcheck")
    # Flower hears the worker's heartbeats: its event receiver is subscribed, so no task event sent now is missed.
    wait_for(lambda: api(flower, "/api/workers?status=true", prefix).get(node) is True, 30, "Flower hearing the worker")

    receipts = [producer.like(7, user) for user in range(1, 31)]
    assert {receipt.wait(30).status for receipt in receipts} == {"applied"}

    def applied_tasks() -> list[dict[str, Any]]:
        tasks = api(flower, "/api/tasks", prefix)
        done = [t for t in tasks.values() if t.get("name") == APPLY_TASK and t.get("state") == "SUCCESS"]
        # The tasks carry what the worker reported: per message, its events' statuses.
        return done if sum(ast.literal_eval(t["result"]).get("applied", 0) for t in done) == len(receipts) else []

    tasks = wait_for(applied_tasks, 30, f"Flower listing the {APPLY_TASK} tasks as SUCCESS", interval_s=0.5)
    assert {t["worker"] for t in tasks} == {node}
    assert all(ast.literal_eval(t["kwargs"])["partition"] == receipts[0].partition for t in tasks)

    # Its "processed" column counts messages (task-received events), as "succeeded" does.
    workers_view = wait_for(
        lambda: (w := api(flower, "/workers?json=1", prefix)["data"]) and w[0].get("task-received") == len(tasks) and w,
        30,
        "Flower's processed column counting the messages",
    )
    assert workers_view[0]["task-succeeded"] == len(tasks)

    # The remote-control view (inspect) lists the worker, with its 16 partition queues.
    workers = wait_for(lambda: api(flower, "/api/workers?refresh=1", prefix).get(node), 30, "the worker in inspect")
    queues = {queue["name"] for queue in workers["active_queues"]}
    assert queues == {f"seqproc.p{p:02d}" for p in range(16)}
    # Its stats too: they carry the worker's transport options, each of which must encode (a broker watch did not).
    assert workers["stats"]["pid"] == worker.pid
    assert "Control command error" not in worker.log()

    # The password appears nowhere in Flower's output.
    assert flower.stop() == 0
    assert PASSWORD not in flower.log()
    assert "basic auth" in flower.log()


def test_flower_sees_the_partition_queues_on_the_broker(
    clean: Settings, start_flower: Callable[..., FlowerProcess]
) -> None:
    """Flower's Broker tab and /api/queues/length read the partition queues of seqproc's Redis broker."""
    receipts = [producer.like(9, user) for user in range(1, 6)]  # no worker: they wait in one partition queue
    waiting = receipts[0].queue
    flower = start_flower(clean, SEQPROC_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    flower.wait_answering("/healthcheck")
    lengths = {q["name"]: q["messages"] for q in api(flower, "/api/queues/length")["active_queues"]}
    assert {f"seqproc.p{p:02d}" for p in range(16)} <= set(lengths)
    assert lengths[waiting] == len(receipts)
    assert sum(lengths.values()) == len(receipts)
    status, page = http_get(f"http://127.0.0.1:{flower.port}/broker", (USER, PASSWORD))
    assert status == 200
    assert waiting.encode() in page
    assert re.search(rb"broker-url[^>]*>\s*redis://", page), page[page.find(b"broker-url") :][:200]


def test_basic_auth_guards_the_api_and_the_dashboard(
    clean: Settings, start_flower: Callable[..., FlowerProcess]
) -> None:
    flower = start_flower(clean, SEQPROC_FLOWER_BASIC_AUTH=f"someone:else,{USER}:{PASSWORD}")
    flower.wait_answering("/healthcheck")
    base = f"http://127.0.0.1:{flower.port}"
    for path in ("/api/workers", "/api/tasks", "/workers", "/tasks"):
        assert http_get(base + path)[0] == 401, path
        assert http_get(base + path, (USER, "wrong"))[0] == 401, path
        assert http_get(base + path, (USER, PASSWORD))[0] == 200, path
    assert http_get(base + "/api/workers", ("someone", "else"))[0] == 200


def test_without_auth_flower_binds_loopback_only(clean: Settings, start_flower: Callable[..., FlowerProcess]) -> None:
    flower = start_flower(clean)
    flower.wait_answering("/healthcheck")
    base = f"http://127.0.0.1:{flower.port}"
    assert http_get(base + "/workers")[0] == 200  # the dashboard, open on this host
    assert http_get(base + "/api/workers")[0] == 401  # Flower keeps its API closed without auth
    listening = subprocess.run(["ss", "-Htln", f"sport = :{flower.port}"], capture_output=True, text=True, check=True)
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.stdout.splitlines()}
    assert addresses == {"127.0.0.1"}, listening.stdout


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.10", "flower.example.com"])
def test_a_non_loopback_address_without_basic_auth_is_refused(clean: Settings, address: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "seqproc", "flower", "--port", str(free_port()), "--address", address],
        cwd=ROOT,
        env=settings_env(clean),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("seqproc: ConfigError: SEQPROC_FLOWER_BASIC_AUTH is required"), lines[0]
    assert address in lines[0]


def test_the_address_setting_is_checked_too(clean: Settings) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "seqproc", "flower"],
        cwd=ROOT,
        env=settings_env(clean, SEQPROC_FLOWER_ADDRESS="0.0.0.0", SEQPROC_FLOWER_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3, run.stderr
    assert "SEQPROC_FLOWER_BASIC_AUTH is required when Flower binds to 0.0.0.0" in run.stderr
