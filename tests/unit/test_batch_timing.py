"""When the batcher flushes: once arrivals pause for ``batch_interval_ms``, or ``batch_max_wait_ms`` after the first
message of the batch, or when it holds ``batch_size`` events; while the transport says a backlog is waiting, a pause
between two fetches is not a pause in arrivals."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from seqproc.models.envelope import task_envelope
from seqproc.models.outcomes import outcome_store
from seqproc.models.settings import Settings
from seqproc.models.transport import Fetched, fetched
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.producer.build import build_event
from seqproc.worker import runtime
from seqproc.worker.consume import batching
from seqproc.worker.consume.batching import Batcher

PARTITIONS = 16
ARTICLE = 3
PARTITION = partition_for(article_key(ARTICLE), PARTITIONS)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000.0


class Timer:
    """The consumer's timer on the test's clock: ``fire`` runs what is due by then."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[Any] = []

    def call_after(self, seconds: float, callback: Any) -> Any:
        entry = SimpleNamespace(at=self.clock.now + seconds, callback=callback)
        entry.cancel = lambda: self.pending.remove(entry)
        self.pending.append(entry)
        return entry

    def fire(self) -> None:
        due = [entry for entry in self.pending if entry.at <= self.clock.now + 1e-9]
        self.pending = [entry for entry in self.pending if entry not in due]
        for entry in due:
            entry.callback()


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[Batcher, Clock, Timer, list[int]]:
    clock = Clock()
    monkeypatch.setattr(batching.time, "monotonic", clock.monotonic)
    settings = Settings(partitions=PARTITIONS, batch_size=500, batch_interval_ms=2, batch_max_wait_ms=50)
    batcher = Batcher(runtime.Runtime(settings, None, outcome_store("memory://", ttl_s=60), {PARTITION: 1}))  # type: ignore[arg-type]
    flushed: list[int] = []

    def flush() -> None:  # what was held when it flushed; the apply itself is tested elsewhere
        if batcher._timer is not None:
            batcher._timer.cancel()
            batcher._timer = None
        flushed.append(len(batcher.buffer))
        batcher.buffer, batcher.events_held = [], 0

    monkeypatch.setattr(batcher, "flush", flush)
    timer = Timer(clock)
    batcher.bind(SimpleNamespace(qos=SimpleNamespace(value=500), hub=object(), timer=timer))
    return batcher, clock, timer, flushed


_users = iter(range(1, 10**6))


def chunk(size: int) -> list[Fetched]:
    queue = queue_name(PARTITION)
    return [
        fetched(
            queue,
            task_envelope(
                queue,
                PARTITION,
                [build_event("like", {"article_id": ARTICLE, "user_id": next(_users)})],
                task_id=f"t{n}",
            ).encode(),
        )
        for n in range(size)
    ]


def test_a_pause_in_arrivals_flushes(setup: tuple[Batcher, Clock, Timer, list[int]]) -> None:
    batcher, clock, timer, flushed = setup
    batcher.deliver(chunk(10), more=False)
    clock.advance_ms(1)
    timer.fire()
    assert flushed == []  # not yet idle for batch_interval_ms
    clock.advance_ms(2)
    timer.fire()
    assert flushed == [10]


def test_while_a_backlog_drains_the_batch_fills_instead(setup: tuple[Batcher, Clock, Timer, list[int]]) -> None:
    batcher, clock, timer, flushed = setup
    for _ in range(7):  # 7 fetches of 64, each slower than batch_interval_ms, the queue never empty
        batcher.deliver(chunk(64), more=True)
        clock.advance_ms(4)
        timer.fire()
    assert flushed == []
    batcher.deliver(chunk(64), more=True)  # 512 events: a full batch
    assert flushed == [512]
    batcher.deliver(chunk(20), more=False)  # the last of it
    clock.advance_ms(3)
    timer.fire()
    assert flushed == [512, 20]


def test_batch_max_wait_counts_from_the_batch_first_message(setup: tuple[Batcher, Clock, Timer, list[int]]) -> None:
    """A batch that began long after the previous one waits its own ``batch_max_wait_ms``, not what was left of an
    earlier batch's (with whole fetches delivered at once the batcher once missed the start of a batch, and every
    later one flushed at the first tick)."""
    batcher, clock, timer, flushed = setup
    batcher.deliver(chunk(5), more=False)
    clock.advance_ms(3)
    timer.fire()
    assert flushed == [5]
    clock.advance_ms(10_000)  # quiet for ten seconds, then a backlog comes
    for _ in range(5):
        batcher.deliver(chunk(8), more=True)
        clock.advance_ms(9)
        timer.fire()
    assert flushed == [5]  # 45 ms into this batch: still filling
    batcher.deliver(chunk(8), more=True)
    clock.advance_ms(9)
    timer.fire()
    assert flushed == [5, 48]  # 54 ms: batch_max_wait_ms is up


def test_the_batch_is_due_soon_after_a_backlog_ends(setup: tuple[Batcher, Clock, Timer, list[int]]) -> None:
    """The timer moved out to batch_max_wait_ms while a backlog drained comes back in once the last fetch shows
    the queues empty: the last messages of a backlog wait batch_interval_ms, not batch_max_wait_ms."""
    batcher, clock, timer, flushed = setup
    batcher.deliver(chunk(64), more=True)
    clock.advance_ms(2)
    timer.fire()  # idle for batch_interval_ms, but a backlog: the timer moves out to the cap
    assert flushed == []
    clock.advance_ms(2)
    batcher.deliver(chunk(20), more=False)  # the last of it
    clock.advance_ms(2)
    timer.fire()
    assert flushed == [84]


def test_a_fetch_that_finds_nothing_ends_the_backlog(setup: tuple[Batcher, Clock, Timer, list[int]]) -> None:
    """A backlog that ends without a short fetch (the queue was given away, its lease lost): an empty delivery
    ends it too."""
    batcher, clock, timer, flushed = setup
    batcher.deliver(chunk(64), more=True)
    clock.advance_ms(3)
    timer.fire()
    batcher.deliver([], more=False)
    clock.advance_ms(1)
    timer.fire()
    assert flushed == [64]


class Source:
    """The channel as the batcher's timer sees it: ``arrive`` queues messages; ``fetch_now`` hands over all that
    arrived since the last fetch (an empty chunk if nothing did), and records when it was called."""

    def __init__(self, batcher: Batcher, clock: Clock) -> None:
        self.batcher = batcher
        self.clock = clock
        self.waiting = 0
        self.fetched_at_ms: list[float] = []
        self.fail = False

    def arrive(self, count: int) -> None:
        self.waiting += count

    def fetch_now(self) -> int:
        if self.fail:
            raise ConnectionError("the broker went away")
        self.fetched_at_ms.append(round((self.clock.now - 1000.0) * 1000.0, 3))
        taken, self.waiting = self.waiting, 0
        self.batcher.deliver(chunk(taken) if taken else [], more=False)
        return taken


@pytest.fixture
def sourced(setup: tuple[Batcher, Clock, Timer, list[int]]) -> tuple[Batcher, Clock, Timer, list[int], Source]:
    batcher, clock, timer, flushed = setup
    source = Source(batcher, clock)
    batcher.source = source
    return batcher, clock, timer, flushed, source


def run_until(clock: Clock, timer: Timer, ms: float) -> None:
    """Advance the clock 0.5 ms at a time up to ``ms``, firing what is due."""
    for _ in range(int(ms * 2)):
        clock.advance_ms(0.5)
        timer.fire()


def test_an_open_batch_fetches_on_its_timer_and_each_fetch_carries_what_arrived(
    sourced: tuple[Batcher, Clock, Timer, list[int], Source],
) -> None:
    """A steady stream of one-event messages (one every 0.5 ms, a web server's): the batch opened by the first is
    not woken per message; its timer fetches 2 ms later, then 4, 8, 12.5 ms after each fetch (batch_max_wait_ms / 4),
    each fetch carrying everything that arrived meanwhile, until batch_max_wait_ms applies the batch."""
    batcher, clock, timer, flushed, source = sourced
    batcher.deliver(chunk(1), more=False)
    assert batcher.fetches_itself()
    for _ in range(120):  # 60 ms of arrivals
        clock.advance_ms(0.5)
        source.arrive(1)
        timer.fire()
    assert source.fetched_at_ms[:5] == [2.0, 6.0, 14.0, 26.5, 39.0]
    assert flushed[0] == 1 + 100  # the first batch: 50 ms of arrivals, 5 fetches instead of 100 wake-ups
    assert not any(at < 50.0 and at not in (2.0, 6.0, 14.0, 26.5, 39.0) for at in source.fetched_at_ms)


def test_a_fetch_that_finds_nothing_applies_the_batch_at_once(
    sourced: tuple[Batcher, Clock, Timer, list[int], Source],
) -> None:
    batcher, clock, timer, flushed, source = sourced
    batcher.deliver(chunk(3), more=False)
    source.arrive(2)
    run_until(clock, timer, 2)
    assert source.fetched_at_ms == [2.0]
    assert flushed == []
    run_until(clock, timer, 4)  # the next fetch, 4 ms later, finds nothing: arrivals paused
    assert source.fetched_at_ms == [2.0, 6.0]
    assert flushed == [5]
    assert not batcher.fetches_itself()  # the channel waits on the bells again


def test_a_backlog_is_fetched_at_once_by_the_timer(sourced: tuple[Batcher, Clock, Timer, list[int], Source]) -> None:
    batcher, _clock, timer, flushed, source = sourced
    batcher.deliver(chunk(64), more=True)
    source.arrive(30)
    timer.fire()  # due now: no wait
    assert source.fetched_at_ms == [0.0]
    assert flushed == []


def test_a_failed_fetch_applies_the_batch_in_hand(sourced: tuple[Batcher, Clock, Timer, list[int], Source]) -> None:
    batcher, clock, timer, flushed, source = sourced
    batcher.deliver(chunk(4), more=False)
    source.fail = True
    run_until(clock, timer, 2)
    assert flushed == [4]
