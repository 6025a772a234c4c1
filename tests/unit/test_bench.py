"""The benchmark's JSON contract (what bench/results/*.json and the README's figures are read from), its ratios, its
workloads and the write-behind risk figure: pinned without PostgreSQL or Redis."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from seqproc.models.errors import ConfigError
from seqproc.worker.cli import cli
from seqproc.worker.cli.bench import load_bench

# The checkout's bench/ as `seqproc bench` loads it (under one name, seqproc_bench), so that these tests check the
# modules the command runs.
BENCH_CLI = load_bench()

import seqproc_bench_app  # noqa: E402  (bench/web, put on the path by seqproc_bench.servers)
from seqproc_bench import writebehind, wrk  # noqa: E402
from seqproc_bench.harness import DEFAULT_VARIANT, ProducerVariant, RunResult  # noqa: E402
from seqproc_bench.run import SOAK_SCENARIO, Comparison, save, soak_command  # noqa: E402
from seqproc_bench.scenarios import FLASH_PRODUCT, HOT_ARTICLE, SPREAD_ARTICLES, Op, workload  # noqa: E402
from seqproc_bench.server_report import ServerComparison, ServerResult  # noqa: E402
from seqproc_bench.server_run import ServerLoad, count_problems  # noqa: E402

RUN_RESULT_KEYS = {
    "strategy",
    "events",
    "elapsed_s",
    "events_per_s",
    "p50_ms",
    "p99_ms",
    "retries",
    "connections",
    "correct",
    "detail",
}
COMPARISON_KEYS = {
    "scenario",
    "producers",
    "producer_kind",
    "events_per_producer",
    "total_events",
    "workers",
    "strategies",
    "ratios",
    "machine",
    "finished_at",
}


def result(strategy: str, events_per_s: float, *, p99_ms: float = 10.0, **extra: Any) -> RunResult:
    return RunResult(
        strategy=strategy,
        events=6_400,
        elapsed_s=round(6_400 / events_per_s, 3),
        events_per_s=events_per_s,
        p50_ms=p99_ms / 4,
        p99_ms=p99_ms,
        retries=0,
        connections=3,
        correct=True,
        detail="6400 likes counted, 0 articles off",
        extra=extra,
    )


def comparison(*results: RunResult) -> Comparison:
    return Comparison("hot", 32, 200, 1, list(results))


def test_a_run_result_is_flat_json_with_its_extras_beside_the_figures() -> None:
    data = result("redis_writebehind", 5_000.0, at_risk_max=120, mean_ms=1.5).to_json()
    assert set(data) == RUN_RESULT_KEYS | {"at_risk_max", "mean_ms"}
    assert "extra" not in data
    assert data["events_per_s"] == 5_000.0
    assert data["p99_ms"] == 10.0
    assert data["correct"] is True
    assert data["at_risk_max"] == 120


def test_a_comparison_names_its_run_and_keys_the_strategies_by_name() -> None:
    atomic, batched = result("atomic", 1_000.0), result("seqproc_batched", 20_000.0)
    data = comparison(atomic, batched).to_json()
    assert set(data) == COMPARISON_KEYS
    assert (data["scenario"], data["producers"], data["events_per_producer"], data["workers"]) == ("hot", 32, 200, 1)
    assert data["total_events"] == 32 * 200
    assert data["producer_kind"] == "threads"
    assert data["strategies"] == {"atomic": atomic.to_json(), "seqproc_batched": batched.to_json()}
    assert data["ratios"] == comparison(atomic, batched).ratios()
    assert set(data["machine"]) == {"cpus", "python"}


def test_the_ratios_are_measured_against_the_baselines_run_beside_batched() -> None:
    ratios = comparison(
        result("atomic", 1_000.0, p99_ms=50.0),
        result("optimistic", 500.0),
        result("seqproc_single", 2_000.0),
        result("seqproc_batched", 20_000.0, p99_ms=5.0),
        result("seqproc_observed", 19_000.0),
    ).ratios()
    assert ratios == {
        "batched_vs_atomic_events_per_s": 20.0,
        "batched_vs_optimistic_events_per_s": 40.0,
        "batched_vs_seqproc_single_events_per_s": 10.0,
        "atomic_p99_over_batched_p99": 10.0,
        "observed_vs_batched_events_per_s": 0.95,
    }


def test_a_ratio_is_absent_when_one_of_its_sides_did_not_run() -> None:
    assert comparison(result("atomic", 1_000.0), result("optimistic", 500.0)).ratios() == {}
    assert comparison(
        result("atomic", 1_000.0, p99_ms=50.0), result("seqproc_batched", 4_000.0, p99_ms=5.0)
    ).ratios() == {
        "batched_vs_atomic_events_per_s": 4.0,
        "atomic_p99_over_batched_p99": 10.0,
    }
    # A p99 of 0 (no calls timed) gives no latency ratio rather than a division by zero.
    assert (
        "atomic_p99_over_batched_p99"
        not in comparison(result("atomic", 1_000.0), result("seqproc_batched", 4_000.0, p99_ms=0.0)).ratios()
    )


def test_hot_sends_every_like_to_one_article_each_by_a_distinct_user() -> None:
    load = workload("hot", 4, 50)
    ops = [op for mine in load.ops for op in mine]
    assert len(load.ops) == 4
    assert all(len(mine) == 50 for mine in load.ops)
    assert {(op.kind, op.entity) for op in ops} == {("like", HOT_ARTICLE)}
    assert len({op.n for op in ops}) == load.total == 200
    assert load.expected_likes() == {HOT_ARTICLE: 200}
    assert load.stock == 0


def test_spread_covers_a_thousand_articles_the_same_way_on_every_run() -> None:
    load = workload("spread", 8, 2_500)
    ops = [op for mine in load.ops for op in mine]
    assert SPREAD_ARTICLES == 1_000
    assert {op.kind for op in ops} == {"like"}
    assert set(load.expected_likes()) == set(range(1, SPREAD_ARTICLES + 1))
    assert sum(load.expected_likes().values()) == load.total == 20_000
    assert len({op.n for op in ops}) == load.total
    assert workload("spread", 8, 2_500).ops == load.ops  # the same work for every strategy
    assert workload("spread", 8, 2_500, seed=8).ops != load.ops


def test_flash_puts_half_the_demand_on_sale_for_one_product() -> None:
    load = workload("flash", 3, 7)
    ops = [op for mine in load.ops for op in mine]
    assert {(op.kind, op.entity) for op in ops} == {("reserve", FLASH_PRODUCT)}
    assert load.total == 21
    assert load.stock == 21 // 2
    assert len({op.n for op in ops}) == 21


def test_an_unknown_scenario_is_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="hot, spread, flash"):
        workload("cold", 1, 1)


@pytest.mark.parametrize(("duration_s", "producers"), [(600.0, 8), (90.5, 32)])
def test_the_soak_command_is_one_the_cli_accepts_with_the_same_figures(duration_s: float, producers: int) -> None:
    command = soak_command(duration_s=duration_s, producers=producers)
    program, name, *args = command.split()
    assert (program, name) == ("seqproc", "bench")
    assert name in cli.commands  # the seqproc CLI hands `seqproc bench ...` to the checkout's command
    params = BENCH_CLI.bench.make_context(name, args).params
    assert params["soak_s"] == duration_s
    assert params["producers_csv"] == str(producers)
    assert SOAK_SCENARIO == "spread"


@dataclass
class FakeRedisState:
    lists: dict[str, list[str]] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)


class FakeRedis:
    """The part of redis.Redis that the write-behind producers use, in memory; clients sharing a "connection pool"
    share the data, as real clients share the server."""

    def __init__(self, *, connection_pool: FakeRedisState | None = None) -> None:
        self.connection_pool = connection_pool or FakeRedisState()

    @classmethod
    def from_url(cls, _url: str) -> FakeRedis:
        return cls()

    def incr(self, key: str) -> int:
        self.connection_pool.counters[key] += 1
        return self.connection_pool.counters[key]

    def decr(self, key: str) -> int:
        self.connection_pool.counters[key] -= 1
        return self.connection_pool.counters[key]

    def rpush(self, key: str, value: str) -> int:
        items = self.connection_pool.lists.setdefault(key, [])
        items.append(value)
        return len(items)

    def lpop(self, key: str, count: int) -> list[str]:
        items = self.connection_pool.lists.setdefault(key, [])
        taken, items[:] = items[:count], items[count:]
        return taken

    def pipeline(self, *, transaction: bool) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.queued: list[tuple[str, tuple[Any, ...]]] = []

    def incr(self, *args: Any) -> None:
        self.queued.append(("incr", args))

    def rpush(self, *args: Any) -> None:
        self.queued.append(("rpush", args))

    def execute(self) -> list[Any]:
        return [getattr(self.client, name)(*args) for name, args in self.queued]


def test_writebehind_at_risk_is_the_peak_each_push_saw_not_the_flushers_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writebehind, "redis", SimpleNamespace(Redis=FakeRedis))
    monkeypatch.setattr(writebehind, "verify_tables", lambda *_: (True, "ok"))
    strategy = writebehind.WriteBehindStrategy("postgresql://bench", "redis://bench/14")
    strategy.redis.connection_pool.counters["wb:stock:1"] = 1
    first, second = strategy.producer(0), strategy.producer(1)
    for n in range(3):
        first(Op("like", 1, n))
    second(Op("reserve", 1, 100))  # the 4th event waiting: the peak
    second(Op("reserve", 1, 101))  # sold out: nothing pushed
    strategy.redis.lpop(writebehind.PENDING, writebehind.FLUSH_CHUNK)  # the flusher takes all 4
    first(Op("like", 2, 3))
    assert strategy.at_risk_max == 4
    _, _, extra = strategy.verify(workload("hot", 1, 1))
    assert extra == {"at_risk_max": 4, "at_risk_sampled_max": 0}  # no flush sampled the list here


class CountingStrategy:
    """A strategy that applies nothing: each producer counts its calls and notes its process, so that the harness's
    two modes can be checked without services."""

    name = "counting"

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.pids: set[int] = set()
        self.processes_flag: bool | None = None

    def setup(self, workload: Any) -> None:
        self.counts = {}

    def producer(self, index: int) -> Any:
        self.counts[index] = 0

        def call(op: Op) -> int:
            self.counts[index] += 1
            return 1 if op.n % 10 == 0 else 0  # a "retry" now and then, summed by the harness

        return call

    def drain(self, timeout_s: float) -> None:
        pass

    def report(self, index: int) -> dict[str, Any]:
        import os

        return {"count": self.counts[index], "pid": os.getpid()}

    def absorb(self, reports: list[dict[str, Any]], *, processes: bool) -> None:
        self.counts = {i: r["count"] for i, r in enumerate(reports)}
        self.pids = {r["pid"] for r in reports}
        self.processes_flag = processes

    def verify(self, workload: Any) -> tuple[bool, str, dict[str, Any]]:
        return sum(self.counts.values()) == workload.total, "", {}

    def teardown(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_the_harness_runs_producers_as_threads_or_forked_processes(mode: str) -> None:
    import os

    from seqproc_bench.harness import _run_processes, _run_threads

    strategy = CountingStrategy()
    load = workload("spread", 4, 25)
    strategy.setup(load)
    run = _run_threads if mode == "threads" else _run_processes
    latencies, retries, sent, elapsed, producer_cpu_s = run(strategy, load)
    assert len(latencies) == load.total  # one latency per call, from every producer
    assert 0 < producer_cpu_s < 60  # the producers' CPU over their calls, summed over processes
    assert retries == sum(1 for ops in load.ops for op in ops if op.n % 10 == 0)
    assert 0 <= sent <= elapsed
    assert strategy.verify(load)[0]
    assert strategy.counts == dict.fromkeys(range(4), 25)
    assert strategy.processes_flag is (mode == "processes")
    if mode == "processes":
        assert len(strategy.pids) == 4  # each producer its own process...
        assert os.getpid() not in strategy.pids  # ...none of them this one
    else:
        assert strategy.pids == {os.getpid()}


#: What wrk printed against a server that answers every POST with 501 (``python -m http.server``).
WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:18395/noop
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.43ms    1.46ms  10.59ms   84.58%
  1669 requests in 1.00s, 0.88MB read
  Non-2xx or 3xx responses: 1669
Requests/sec:   1663.89
SEQPROC_WRK {"requests": 1669, "duration_us": 1003070, "bytes": 926493, "errors": {"connect": 0, "read": 0, \
"write": 0, "status": 1669, "timeout": 0}, "latency_us": {"p50": 739, "p90": 3618, "p99": 6607, "max": 10585, \
"mean": 1432.6}}
"""


def wrk_result(requests: int, *, non_2xx: int = 0, p99_ms: float = 10.0, duration_s: float = 8.0) -> wrk.WrkResult:
    latency = {"p50": p99_ms / 4, "p90": p99_ms / 2, "p99": p99_ms, "max": p99_ms * 2, "mean": p99_ms / 3}
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    return wrk.WrkResult(requests, non_2xx, duration_s, errors, latency, cpu_s=1.0)


def test_wrk_figures_are_read_from_the_scripts_json_line() -> None:
    figures = wrk.parse(WRK_OUTPUT, cpu_s=0.5)
    assert (figures.requests, figures.non_2xx, figures.responses_2xx) == (1669, 1669, 0)
    assert figures.duration_s == 1.00307
    assert figures.errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert figures.latency_ms == {"p50": 0.739, "p90": 3.618, "p99": 6.607, "max": 10.585, "mean": 1.433}
    assert figures.requests_per_s == 0.0  # every response was a 501: nothing accepted
    all_ok = wrk.parse(WRK_OUTPUT.replace('"status": 1669', '"status": 0'), cpu_s=0)
    assert all_ok.requests_per_s == pytest.approx(1669 / 1.00307)
    with pytest.raises(wrk.WrkError, match="no SEQPROC_WRK line"):
        wrk.parse(WRK_OUTPUT.replace("SEQPROC_WRK", "SOMETHING"), cpu_s=0)


def test_the_load_script_gives_each_wrk_thread_its_own_users_on_the_article_it_is_given() -> None:
    script = wrk.SCRIPT.read_text()
    assert 'thread:set("thread_number", #threads)' in script
    assert "thread_number * 1000000000 + sent" in script
    argv = wrk.command("http://127.0.0.1:1/seqproc", threads=2, connections=32, duration_s=8, article=1)
    assert argv[1:] == [
        "--threads=2",
        "--connections=32",
        "--duration=8s",
        f"--timeout={wrk.TIMEOUT_S}s",
        f"--script={wrk.SCRIPT}",
        "http://127.0.0.1:1/seqproc",
        "--",
        "1",
    ]


def test_a_missing_wrk_is_reported_with_how_to_install_it_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk there
    # No database or broker is reachable at these addresses: the error must come before the bench touches them.
    monkeypatch.setenv("SEQPROC_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(wrk.WrkError, match=r"needs wrk.*apt-get install -y wrk"):
        BENCH_CLI.bench.main(args=["--server", "gunicorn"], standalone_mode=False)


def test_wrk_needs_a_connection_per_thread() -> None:
    with pytest.raises(ConfigError, match="--connections: 1 is fewer than --threads 2"):
        BENCH_CLI.bench.main(args=["--server", "uvicorn", "--connections", "1"], standalone_mode=False)


def test_the_count_check_wants_rows_count_and_accepted_requests_equal_within_wrks_view() -> None:
    figures = wrk_result(1_000)
    assert count_problems(figures, 1_000, 1_000, 1_000, connections=32) == []
    assert count_problems(figures, 1_032, 1_032, 1_032, connections=32) == []  # 32 in flight when wrk stopped
    assert count_problems(figures, 1_000, None, None, connections=32) == []  # the no-op: nothing to count
    assert count_problems(figures, 1_000, 1_000, 999, connections=32) == [
        "1000 like rows, like_count 999, 1000 requests accepted"
    ]
    assert count_problems(figures, 1_000, 1_001, 1_001, connections=32) == [
        "1001 like rows, like_count 1001, 1000 requests accepted"
    ]
    assert count_problems(figures, 999, 999, 999, connections=32) == [
        "999 requests accepted by the server, wrk read 1000 2xx"
    ]
    assert count_problems(figures, 1_033, 1_033, 1_033, connections=32) == [
        "1033 requests accepted by the server, wrk read 1000 2xx"
    ]
    assert count_problems(wrk_result(1_000, non_2xx=3), 997, 997, 997, connections=32) == ["3 responses were not 2xx"]


def server_result(strategy: str, accepted: int, elapsed_s: float, **extra: Any) -> ServerResult:
    counted = None if strategy == "noop" else accepted
    return ServerResult(
        strategy=strategy,
        wrk=wrk_result(accepted, p99_ms=extra.pop("p99_ms", 10.0)),
        accepted=accepted,
        elapsed_s=elapsed_s,
        like_rows=counted,
        like_count=counted,
        correct=True,
        detail="",
        server_cpu_us_per_request=100.0,
        **extra,
    )


def test_a_server_comparison_gives_each_strategy_its_ratios_to_the_noop_and_atomic_rows() -> None:
    load = ServerLoad("gunicorn", 16, 32, 2, 8)
    comparison = ServerComparison(
        load,
        [
            server_result("noop", 40_000, 8.0, p99_ms=13.0),
            server_result("atomic", 6_000, 8.0),
            server_result("seqproc", 24_000, 8.0, p99_ms=26.0, worker_cpu_us_per_event=40.0),
        ],
    )
    data = comparison.to_json()
    assert data["command"] == (
        "seqproc bench --server gunicorn --server-workers 16 --connections 32 --threads 2 --duration-s 8 "
        "--strategies noop,atomic,seqproc"
    )
    seqproc = data["strategies"]["seqproc"]
    assert seqproc["events_per_s"] == 3_000.0
    assert (seqproc["x_noop"], seqproc["x_atomic"]) == (0.6, 4.0)
    assert (data["strategies"]["noop"]["x_noop"], data["strategies"]["atomic"]["x_atomic"]) == (1.0, 1.0)
    assert seqproc["worker_cpu_us_per_event"] == 40.0
    assert data["ratios"] == {
        "seqproc_vs_noop_events_per_s": 0.6,
        "seqproc_vs_atomic_events_per_s": 4.0,
        "seqproc_p99_over_noop_p99": 2.0,
    }
    # Without the baselines, no ratios (rather than a division by a missing row).
    alone = ServerComparison(load, [server_result("outbox", 1_000, 2.0)])
    assert alone.ratios() == {}
    outbox = alone.to_json()["strategies"]["outbox"]
    assert (outbox["x_noop"], outbox["x_atomic"]) == (None, None)


def test_the_server_processes_counters_are_summed_from_their_files(tmp_path: Any) -> None:
    assert seqproc_bench_app.ready_processes(tmp_path) == 0
    counters = seqproc_bench_app.Counters(str(tmp_path))
    assert seqproc_bench_app.ready_processes(tmp_path) == 1
    for n in range(1, 4):
        counters.accept(messages=n, events=2 * n)
    # Another process's counters, as it would have left them.
    (tmp_path / f"999999{seqproc_bench_app.COUNTS_SUFFIX}").write_bytes(
        struct.pack(seqproc_bench_app.COUNTS_FORMAT, 10, 4, 40)
    )
    assert seqproc_bench_app.read_counts(tmp_path) == (13, 7, 46)
    assert seqproc_bench_app.like_of("article=1&user=7") == (1, 7)
    with pytest.raises(KeyError):
        seqproc_bench_app.like_of("article=1")


VARIANT_FLAGS = [
    ("--receipts", "drop"),
    ("--connect", "first-call"),
    ("--warm-up", "other-article"),
    ("--after-sending", "exit"),
]


@pytest.mark.parametrize(("flag", "value"), VARIANT_FLAGS)
def test_a_producer_process_variant_needs_process_producers(flag: str, value: str) -> None:
    with pytest.raises(
        ConfigError, match=f"^{flag} {value}: needs --producer-mode processes .*--producer-mode is threads"
    ):
        BENCH_CLI.bench.main(args=[flag, value], standalone_mode=False)
    with pytest.raises(ValueError, match=f"^{flag} {value} needs --producer-mode processes"):
        ProducerVariant(**{flag.lstrip("-").replace("-", "_"): value}).check("threads")
    ProducerVariant(**{flag.lstrip("-").replace("-", "_"): value}).check("processes")  # allowed there


@pytest.mark.parametrize(
    ("instead", "flag", "value"),
    [
        (["--server", "gunicorn"], "--receipts", "drop"),
        (["--cpu", "10"], "--after-sending", "exit"),
        (["--scale", "1,2"], "--connect", "first-call"),
    ],
)
def test_a_producer_process_variant_is_refused_where_no_comparison_runs(
    instead: list[str], flag: str, value: str
) -> None:
    args = ["--producer-mode", "processes", *instead, flag, value]
    with pytest.raises(ConfigError, match=f"^{flag} {value}: only for the strategy comparison, not with {instead[0]}$"):
        BENCH_CLI.bench.main(args=args, standalone_mode=False)


def test_a_producer_process_variant_takes_only_its_values() -> None:
    import click

    with pytest.raises(click.BadParameter, match="'keep', 'drop'"):
        BENCH_CLI.bench.main(args=["--producer-mode", "processes", "--receipts", "lose"], standalone_mode=False)
    with pytest.raises(ValueError, match=r"^--after-sending must be one of stay, exit"):
        ProducerVariant(after_sending="leave").check("processes")


def test_the_defaults_are_the_benchs_own_shape_and_change_nothing_in_names() -> None:
    assert ProducerVariant("keep", "hook", "none", "stay") == DEFAULT_VARIANT
    assert DEFAULT_VARIANT.changed() == {}
    assert DEFAULT_VARIANT.suffix() == ""
    DEFAULT_VARIANT.check("threads")  # nothing changed: fine with threads


@pytest.mark.parametrize(
    ("variant", "mode", "name"),
    [
        (DEFAULT_VARIANT, "threads", "hot-p16.json"),
        (DEFAULT_VARIANT, "processes", "hot-processes-p16.json"),
        (ProducerVariant(receipts="drop"), "processes", "hot-processes-receipts-drop-p16.json"),
        (
            ProducerVariant("drop", "first-call", "other-article", "exit"),
            "processes",
            "hot-processes-receipts-drop-connect-first-call-warm-up-other-article-after-sending-exit-p16.json",
        ),
    ],
)
def test_a_variant_is_recorded_in_the_result_and_names_its_file(
    variant: ProducerVariant, mode: str, name: str, tmp_path: Any
) -> None:
    import json

    run = Comparison("hot", 16, 400, 1, [result("atomic", 2_000.0)], mode, variant)
    [path] = save([run], tmp_path)
    assert path.name == name
    data = json.loads(path.read_text())
    if mode == "threads":
        assert set(data) == COMPARISON_KEYS  # threads have no variant
    else:
        assert set(data) == COMPARISON_KEYS | {"producer_variant"}
        assert data["producer_variant"] == {
            "receipts": variant.receipts,
            "connect": variant.connect,
            "warm_up": variant.warm_up,
            "after_sending": variant.after_sending,
        }


class OrderedStrategy(CountingStrategy):
    """CountingStrategy that notes, across processes, whether each producer's report came before the drain and
    whether its calls came after the settle."""

    def setup(self, workload: Any) -> None:
        import multiprocessing

        super().setup(workload)
        context = multiprocessing.get_context("fork")
        self.settled, self.drained = context.Event(), context.Event()
        self.before_settle = context.Value("i", 0)

    def producer(self, index: int) -> Any:
        counted = super().producer(index)

        def call(op: Op) -> int:
            if not self.settled.is_set():
                with self.before_settle.get_lock():
                    self.before_settle.value += 1
            return counted(op)

        return call

    def settle(self, timeout_s: float) -> None:
        self.settled.set()

    def drain(self, timeout_s: float) -> None:
        self.drained.set()

    def report(self, index: int) -> dict[str, Any]:
        return super().report(index) | {"after_drain": self.drained.is_set()}

    def absorb(self, reports: list[dict[str, Any]], *, processes: bool) -> None:
        super().absorb(reports, processes=processes)
        self.after_drain = {r["after_drain"] for r in reports}


@pytest.mark.parametrize("exit_after_sending", [False, True])
def test_producer_processes_report_after_the_drain_or_as_they_exit_after_sending(exit_after_sending: bool) -> None:
    from seqproc_bench.harness import _run_processes

    strategy = OrderedStrategy()
    load = workload("hot", 3, 10)
    strategy.setup(load)
    latencies, _retries, sent, elapsed, producer_cpu_s = _run_processes(
        strategy, load, exit_after_sending=exit_after_sending
    )
    assert len(latencies) == load.total
    assert producer_cpu_s > 0
    assert 0 <= sent <= elapsed
    assert strategy.counts == dict.fromkeys(range(3), 10)
    assert len(strategy.pids) == 3
    assert strategy.before_settle.value == 0  # every call after the settle
    assert strategy.after_drain == {not exit_after_sending}
