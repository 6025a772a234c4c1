"""The benchmark's JSON contract (what bench/results/*.json and the README's figures are read from), its ratios, its
workloads and the write-behind risk figure: pinned without PostgreSQL or Redis."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from seqproc.worker.cli import cli
from seqproc.worker.cli.bench import load_bench

# The checkout's bench/ as `seqproc bench` loads it (under one name, seqproc_bench), so that these tests check the
# modules the command runs.
BENCH_CLI = load_bench()

from seqproc_bench import writebehind  # noqa: E402
from seqproc_bench.harness import RunResult  # noqa: E402
from seqproc_bench.run import SOAK_SCENARIO, Comparison, soak_command  # noqa: E402
from seqproc_bench.scenarios import FLASH_PRODUCT, HOT_ARTICLE, SPREAD_ARTICLES, Op, workload  # noqa: E402

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
