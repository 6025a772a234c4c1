"""Group commit: concurrent calls share sends, each returns only once its events were sent, failures reach exactly
the callers whose events were in the failed send."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from seqproc.models.errors import PublishError
from seqproc.producer.coalesce import Coalescer


class Recorder:
    def __init__(self, delay_s: float = 0.002, fail_when: Any = None) -> None:
        self.sends: list[list[Any]] = []
        self.deadlines: list[float | None] = []
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.lock = threading.Lock()

    def __call__(self, events: list[Any], deadline: float | None = None) -> None:
        time.sleep(self.delay_s)  # a broker round trip, during which other calls queue up
        if self.fail_when is not None and self.fail_when(events):
            raise ConnectionError("broker gone")
        with self.lock:
            self.sends.append(list(events))
            self.deadlines.append(deadline)

    def sent(self) -> list[Any]:
        with self.lock:
            return [event for send in self.sends for event in send]


def run_threads(count: int, target: Any) -> None:
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()


def test_concurrent_calls_share_sends_and_return_after_their_events_are_sent() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder, linger_s=0)
    returned_before_sent = []

    def call(n: int) -> None:
        for i in range(20):
            event = (n, i)
            coalescer.submit([event])
            if event not in recorder.sent():
                returned_before_sent.append(event)

    run_threads(16, call)
    assert returned_before_sent == []
    assert sorted(recorder.sent()) == sorted((n, i) for n in range(16) for i in range(20))
    assert len(recorder.sends) < 320 / 3  # they shared sends: on average several events per send
    for n in range(16):  # each caller's events stay in its order
        mine = [i for (m, i) in recorder.sent() if m == n]
        assert mine == sorted(mine)


def test_a_lone_call_sends_at_once() -> None:
    recorder = Recorder(delay_s=0)
    coalescer = Coalescer(recorder, linger_s=0)
    started = time.monotonic()
    coalescer.submit(["a"])
    assert recorder.sends == [["a"]]
    assert time.monotonic() - started < 0.5


def test_linger_gathers_more_calls_per_send_under_concurrency() -> None:
    """Once a send carried several calls, the next leader waits (up to the linger) for as many again."""
    sends: dict[float, list[list[Any]]] = {}
    for linger_s in (0.0, 0.05):
        recorder = Recorder(delay_s=0.002)
        coalescer = Coalescer(recorder, linger_s=linger_s)

        def call(n: int, coalescer: Coalescer = coalescer) -> None:
            for i in range(10):
                coalescer.submit([(n, i)])
                time.sleep(0.001 * (n % 3))  # callers out of step: without linger they straggle into sends

        run_threads(8, call)
        assert sorted(recorder.sent()) == sorted((n, i) for n in range(8) for i in range(10))
        sends[linger_s] = recorder.sends
    assert len(sends[0.05]) < len(sends[0.0])


def test_a_lone_sequential_caller_never_waits_for_the_linger() -> None:
    recorder = Recorder(delay_s=0)
    coalescer = Coalescer(recorder, linger_s=0.5)
    started = time.monotonic()
    for n in range(5):
        coalescer.submit([n])
    assert time.monotonic() - started < 0.5  # five calls, not five lingers
    assert recorder.sends == [[n] for n in range(5)]


def test_a_send_tries_until_the_latest_deadline_of_the_calls_it_carries() -> None:
    """No caller is told "not sent" while another caller of the same send may still wait for it."""
    send = Slow(0.2)
    coalescer = Coalescer(send, linger_s=0)
    first = started(coalescer.submit, ["first"], 100.0)  # leads a slow send: the next calls queue behind it
    time.sleep(0.05)
    later = []
    for name, deadline in (("a", 5.0), ("b", 7.0)):
        later.append(started(coalescer.submit, [name], deadline))
        time.sleep(0.02)
    assert all_return([first, *later])
    assert send.sends == [["first"], ["a", "b"]]
    assert send.deadlines == [100.0, 7.0]


def test_a_failed_send_raises_for_its_callers_only_and_later_sends_work() -> None:
    recorder = Recorder(fail_when=lambda events: "bad" in events)
    coalescer = Coalescer(recorder, linger_s=0)
    with pytest.raises(PublishError, match="NOT sent"):
        coalescer.submit(["bad"])
    coalescer.submit(["good"])
    assert recorder.sent() == ["good"]

    failures: list[Any] = []

    def call(n: int) -> None:
        try:
            coalescer.submit(["bad" if n == 0 else n])
        except PublishError:
            failures.append(n)

    run_threads(8, call)
    # Whoever shared the failed send was told so; whoever was not told has its event sent.
    assert 0 in failures
    assert sorted(set(range(1, 8)) - set(failures)) == sorted(e for e in recorder.sent() if e != "good")


def test_two_sends_in_flight_keep_every_callers_order_and_lose_nothing() -> None:
    recorder = Recorder(delay_s=0.002)
    coalescer = Coalescer(recorder, linger_s=0.001, max_in_flight=2)

    def call(n: int) -> None:
        for i in range(30):
            coalescer.submit([(n, i)])

    run_threads(12, call)
    sent = recorder.sent()
    assert sorted(sent) == sorted((n, i) for n in range(12) for i in range(30))
    assert len(sent) == len(set(sent))  # each event sent once
    for n in range(12):
        mine = [i for (m, i) in sent if m == n]
        assert mine == sorted(mine)


class Slow:
    """A send that takes ``delay_s`` and records what it sent; raises ``raise_for`` when an event is in it."""

    def __init__(self, delay_s: float, raise_for: tuple[Any, BaseException] | None = None) -> None:
        self.delay_s = delay_s
        self.raise_for = raise_for
        self.sends: list[list[Any]] = []
        self.deadlines: list[float | None] = []

    def __call__(self, events: list[Any], deadline: float | None = None) -> None:
        self.sends.append(list(events))
        self.deadlines.append(deadline)
        time.sleep(self.delay_s)
        if self.raise_for is not None and self.raise_for[0] in events:
            raise self.raise_for[1]


@pytest.fixture(autouse=True)
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here even when the suite runs where SIGINT is ignored (a shell's background
    job): the tests below send one."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_main_after(delay_s: float) -> None:
    """A real SIGINT to the main thread (which is blocked in a lock) ``delay_s`` from now."""
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(delay_s, signal.pthread_kill, args=(main, signal.SIGINT)).start()


def started(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def all_return(threads: list[threading.Thread]) -> bool:
    for thread in threads:
        thread.join(5)
    return not any(thread.is_alive() for thread in threads)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_an_interrupted_caller_carried_by_a_send_still_wakes_the_callers_after_it() -> None:
    send = Slow(0.3)
    coalescer = Coalescer(send, linger_s=0)
    first = started(coalescer.submit, ["first"])  # leads a slow send: the next calls queue behind it
    time.sleep(0.05)
    leader = started(coalescer.submit, ["leader"])  # the oldest waiter: it will lead the next send
    time.sleep(0.05)
    later = [threading.Timer(0.05, coalescer.submit, args=([n],)) for n in ("a", "b")]  # queue behind the main thread
    for timer in later:
        timer.start()
    interrupt_main_after(0.35)  # during the second send, which carries the main thread's call
    with pytest.raises(KeyboardInterrupt):
        coalescer.submit(["main"])
    assert all_return([first, leader, *later])  # woken through the chain, past the interrupted caller
    assert sorted(send.sends[1]) == ["a", "b", "leader", "main"]  # the main thread's event was sent
    coalescer.submit(["after"])  # and the coalescer goes on


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_an_interrupted_caller_that_no_send_took_yet_leaves_unsent() -> None:
    send = Slow(0.3)
    coalescer = Coalescer(send, linger_s=0)
    first = started(coalescer.submit, ["first"])
    time.sleep(0.05)
    interrupt_main_after(0.1)  # while the main thread's call waits for the send in flight
    with pytest.raises(KeyboardInterrupt):
        coalescer.submit(["main"])
    assert all_return([first])
    coalescer.submit(["after"])  # the lead was not left to a caller that went away
    assert [event for sent in send.sends for event in sent] == ["first", "after"]


def test_a_leader_interrupted_mid_send_still_tells_the_callers_it_carried() -> None:
    send = Slow(0.2, raise_for=("boom", KeyboardInterrupt()))
    coalescer = Coalescer(send, linger_s=0)
    outcomes: dict[str, str] = {}

    def call(name: str) -> None:
        try:
            coalescer.submit([name])
            outcomes[name] = "sent"
        except PublishError as error:
            outcomes[name] = str(error)
        except KeyboardInterrupt:
            outcomes[name] = "interrupted"

    threads = [started(call, "first")]
    time.sleep(0.05)
    threads += [started(call, name) for name in ("boom", "a", "b")]  # "boom" leads the next send, carrying a, b
    assert all_return(threads)
    assert outcomes["first"] == "sent"
    assert outcomes["boom"] == "interrupted"
    assert "interrupted" in outcomes["a"]
    assert "may or may not have been sent" in outcomes["b"]
    coalescer.submit(["after"])
