"""One harness for every strategy: P producers, each sending its E events one call at a time, started together by a
barrier; the clock runs from the first send to the last event applied. Alongside: per-call latency, retries, the
most database connections open at once, and a correctness check against the workload's model.

Producers are threads of this process (``threads``), or processes (``processes``: the usual gunicorn/uWSGI shape,
each handling one request at a time). Processes are forked with the application already imported, and each opens
its connections and makes its first connection before the clock starts, as a preloaded prefork server does; a
``ProducerVariant`` changes that (no connect before the clock, a warm-up call, receipts not kept, the process gone
after its last send)."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine, create_engine

from .direct import libpq_url
from .scenarios import Op, Workload

#: Longest a run may take to apply its events after the producers are done.
DRAIN_TIMEOUT_S = 600
#: The ``application_name`` of the harness's own connections (the sampler's, a strategy's progress polling): the
#: connection sampler leaves them out, so that "db conns" counts only what the strategy under test needs.
HARNESS_APPLICATION_NAME = "seqproc-bench-harness"


PRODUCER_MODES = ("threads", "processes")


@dataclass(frozen=True)
class ProducerVariant:
    """How forked producer processes behave (``--producer-mode processes`` only; the defaults are the bench's shape).

    - ``receipts``: ``keep`` (each call's receipt kept, its outcome read after the drain) or ``drop`` (not kept: the
      run is checked from the database's state alone);
    - ``connect``: ``hook`` (``seqproc.connect()`` in the forked process before the clock, as a post-fork hook) or
      ``first-call`` (no connect: the first send connects);
    - ``warm_up``: ``none`` or ``other-article`` (one like on ``WARM_UP_ARTICLE`` from each process before the clock,
      applied before it starts);
    - ``after_sending``: ``stay`` (the process reports after the drain) or ``exit`` (it reports and exits right after
      its last send).

    ``receipts``, ``connect`` and ``warm_up`` are the seqproc strategies' (the baselines hold their one connection
    either way); ``after_sending`` applies to every strategy."""

    receipts: str = "keep"
    connect: str = "hook"
    warm_up: str = "none"
    after_sending: str = "stay"

    #: Each field: its command-line flag and its allowed values, the default first.
    CHOICES = {
        "receipts": ("--receipts", ("keep", "drop")),
        "connect": ("--connect", ("hook", "first-call")),
        "warm_up": ("--warm-up", ("none", "other-article")),
        "after_sending": ("--after-sending", ("stay", "exit")),
    }

    def changed(self) -> dict[str, str]:
        """The fields not at their default, in the order of ``CHOICES``."""
        return {k: getattr(self, k) for k, (_, allowed) in self.CHOICES.items() if getattr(self, k) != allowed[0]}

    def check(self, mode: str) -> None:
        """A value outside its choices, or any change without process producers: a ``ValueError`` naming the flag."""
        for key, (flag, allowed) in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{flag} must be one of {', '.join(allowed)} (got {getattr(self, key)!r})")
        for key in self.changed():
            if mode != "processes":
                flag = self.CHOICES[key][0]
                raise ValueError(
                    f"{flag} {getattr(self, key)} needs --producer-mode processes (it describes forked producer "
                    f"processes; the producers are {mode})"
                )

    def suffix(self) -> str:
        """For result file names: ``""`` at the defaults, else e.g. ``-receipts-drop-after-sending-exit``."""
        return "".join(f"-{self.CHOICES[k][0].lstrip('-')}-{v}" for k, v in self.changed().items())

    def to_json(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in self.CHOICES}


#: The bench's own shape: receipts kept, ``seqproc.connect()`` before the clock, no warm-up, producers stay.
DEFAULT_VARIANT = ProducerVariant()


class Strategy(Protocol):
    name: str

    def setup(self, workload: Workload) -> None: ...

    def producer(self, index: int) -> Callable[[Op], int]: ...

    def drain(self, timeout_s: float) -> None: ...

    def report(self, index: int) -> dict[str, Any]:
        """After the drain, in the producer's own thread or process: what only it knows (picklable). With
        ``after_sending="exit"``: right after the producer's last send instead."""
        ...

    def absorb(self, reports: list[dict[str, Any]], *, processes: bool) -> None:
        """The producers' reports, before ``verify``; ``processes``: each came from a process of its own."""
        ...

    def verify(self, workload: Workload) -> tuple[bool, str, dict[str, Any]]: ...

    def teardown(self) -> None: ...


@dataclass
class RunResult:
    strategy: str
    events: int
    elapsed_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    retries: int
    connections: int
    correct: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(pid: int) -> float:
    """Seconds the threads of process ``pid`` have spent runnable but waiting for a core, so far (the second field
    of ``/proc/<pid>/task/<tid>/schedstat``, summed over its threads; 0 for a thread gone meanwhile)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def harness_engine(url: str) -> Engine:
    """An engine for a strategy's own bookkeeping (reset, progress polling, verification), named
    ``HARNESS_APPLICATION_NAME`` so that the connection sampler does not count it. Not ``models.db.make_engine``:
    its ``connect_args`` set ``application_name`` and would override one given in the URL."""
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": 5, "application_name": HARNESS_APPLICATION_NAME}
    )


class ConnectionSampler:
    """The most connections to the benchmark database seen at once, sampled every 20 ms; the harness's own
    (``HARNESS_APPLICATION_NAME``, this sampler's included) are left out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-sampler", daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with psycopg.connect(libpq_url(self.url), autocommit=True, application_name=HARNESS_APPLICATION_NAME) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name IS DISTINCT FROM %s",
                    (HARNESS_APPLICATION_NAME,),
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                self._stop.wait(0.02)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run(
    strategy: Strategy,
    workload: Workload,
    *,
    database_url: str,
    mode: str = "threads",
    variant: ProducerVariant = DEFAULT_VARIANT,
) -> RunResult:
    if mode not in PRODUCER_MODES:
        raise ValueError(f"producer mode must be one of {', '.join(PRODUCER_MODES)} (got {mode!r})")
    variant.check(mode)
    try:
        strategy.setup(workload)  # inside the try: a failed setup still stops what it started (worker processes)
        with ConnectionSampler(database_url) as sampler:
            if mode == "threads":
                produced = _run_threads(strategy, workload)
            else:
                produced = _run_processes(strategy, workload, exit_after_sending=variant.after_sending == "exit")
        latencies, retries, sent, elapsed, producer_cpu_s = produced
        correct, detail, extra = strategy.verify(workload)
    finally:
        strategy.teardown()
    flat = sorted(latencies)
    return RunResult(
        strategy=strategy.name,
        events=workload.total,
        elapsed_s=round(elapsed, 3),
        events_per_s=round(workload.total / elapsed, 1),
        p50_ms=round(percentile(flat, 0.50) * 1000, 3),
        p99_ms=round(percentile(flat, 0.99) * 1000, 3),
        retries=retries,
        connections=sampler.peak,
        correct=correct,
        detail=detail,
        extra=extra
        | {
            "mean_ms": round(statistics.fmean(flat) * 1000, 3) if flat else 0.0,
            # When the last producer call returned: the rest of elapsed_s is the apply lag.
            "sent_s": round(sent, 3),
            # CPU of the producers over their calls (time.process_time in each producer process, or of the
            # producing process with threads), per call: where the time goes on the application's side.
            "producer_cpu_us_per_call": round(producer_cpu_s / max(1, workload.total) * 1e6, 1),
            "producer_mode": mode,
        },
    )


def _send_all(call: Callable[[Op], int], ops: tuple[Op, ...], latencies: list[float]) -> int:
    retries = 0
    for op in ops:
        started = time.perf_counter()
        retries += call(op)
        latencies.append(time.perf_counter() - started)
    return retries


def _run_threads(strategy: Strategy, workload: Workload) -> tuple[list[float], int, float, float, float]:
    calls = [strategy.producer(i) for i in range(workload.producers)]  # connections open before the clock
    latencies: list[list[float]] = [[] for _ in calls]
    retries = [0] * len(calls)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls) + 1)

    def produce(index: int) -> None:
        barrier.wait()
        try:
            retries[index] = _send_all(calls[index], workload.ops[index], latencies[index])
        except BaseException as error:  # reported after the run, which then fails loudly
            errors.append(error)

    threads = [threading.Thread(target=produce, args=(i,), name=f"producer-{i}") for i in range(len(calls))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started, started_cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    sent = time.perf_counter() - started
    producer_cpu_s = time.process_time() - started_cpu  # this process: the producer threads (and the sampler's)
    if errors:
        raise RuntimeError(f"{strategy.name}: a producer failed: {errors[0]!r}") from errors[0]
    strategy.drain(DRAIN_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    strategy.absorb([strategy.report(i) for i in range(len(calls))], processes=False)
    return [x for xs in latencies for x in xs], sum(retries), sent, elapsed, producer_cpu_s


def _run_processes(
    strategy: Strategy, workload: Workload, *, exit_after_sending: bool = False
) -> tuple[list[float], int, float, float, float]:
    """Fork one process per producer (the application imported, the strategy set up); each gets ready (the
    strategy's ``warm``: connections, a warm-up), waits for the start, sends its events one after another, reports
    its latencies, then after the drain its report; ``exit_after_sending``: its report with its latencies, and it
    exits. Before the start, the strategy's ``settle`` (if any) waits for what the warm-ups sent."""
    context = multiprocessing.get_context("fork")
    count = workload.producers
    ready = context.Barrier(count + 1)
    start = context.Event()
    after_drain = context.Event()
    results = context.Queue()

    def produce(index: int) -> None:
        try:
            call = strategy.producer(index)  # its own connections, made before the clock
            call_warm = getattr(strategy, "warm", None)
            if call_warm is not None:
                call_warm(index)
            ready.wait()
            start.wait()
            latencies: list[float] = []
            started_cpu = time.process_time()
            retries = _send_all(call, workload.ops[index], latencies)
            cpu_s = time.process_time() - started_cpu
            report = strategy.report(index) if exit_after_sending else None
            results.put(("sent", index, latencies, retries, cpu_s, report))
            if exit_after_sending:
                return
            after_drain.wait()
            results.put(("report", index, None, 0, 0.0, strategy.report(index)))
        except BaseException as error:
            results.put(("error", index, None, 0, 0.0, repr(error)))
            raise

    processes = [context.Process(target=produce, args=(i,), name=f"producer-{i}", daemon=True) for i in range(count)]
    for process in processes:
        process.start()

    def failed(index: int, detail: object) -> RuntimeError:
        return RuntimeError(f"{strategy.name}: producer {index} failed: {detail}")

    try:
        try:
            ready.wait(timeout=120)
        except threading.BrokenBarrierError:  # a producer failed getting ready: say why
            kind, index, *_, detail = results.get(timeout=30)
            raise failed(index, detail) from None
        settle = getattr(strategy, "settle", None)
        if settle is not None:
            settle(DRAIN_TIMEOUT_S)
        started = time.perf_counter()
        start.set()
        latencies: list[float] = []
        retries = 0
        producer_cpu_s = 0.0
        reports: list[dict[str, Any]] = [{} for _ in range(count)]
        for _ in range(count):
            kind, index, mine, tries, cpu_s, detail = results.get(timeout=DRAIN_TIMEOUT_S)
            if kind == "error":
                raise failed(index, detail)
            latencies.extend(mine)
            retries += tries
            producer_cpu_s += cpu_s
            if exit_after_sending:
                reports[index] = detail
        sent = time.perf_counter() - started
        strategy.drain(DRAIN_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        after_drain.set()
        for _ in range(0 if exit_after_sending else count):
            kind, index, _mine, _tries, _cpu_s, detail = results.get(timeout=120)
            if kind == "error":
                raise failed(index, detail)
            reports[index] = detail
        strategy.absorb(reports, processes=True)
    finally:
        start.set()
        after_drain.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    return latencies, retries, sent, elapsed, producer_cpu_s
