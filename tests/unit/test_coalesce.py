"""Group commit: concurrent calls share sends, each returns only once its events were sent, failures reach exactly
the callers whose events were in the failed send."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from seqproc.models.errors import PublishError
from seqproc.producer.coalesce import Coalescer
from tests.conftest import wait_for


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
    send = Gate()
    coalescer = Coalescer(send, linger_s=0)
    first = started(coalescer.submit, ["first"], 100.0)
    send.entered()  # "first" leads a send, held: the next calls queue behind it, in this order
    later = []
    for name, deadline in (("a", 5.0), ("b", 7.0)):
        later.append(started(coalescer.submit, [name], deadline))
        wait_queued(coalescer, len(later))
    send.let_through(2)
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


class Gate:
    """A send that records what it carries, then holds until the test lets it through (each send its own turn);
    raises ``raise_for[1]`` when the event ``raise_for[0]`` is in it. The tests order their threads by what they
    see (a send started, so many calls queued), never by how long they sleep."""

    def __init__(self, raise_for: tuple[Any, BaseException] | None = None) -> None:
        self.raise_for = raise_for
        self.sends: list[list[Any]] = []
        self.deadlines: list[float | None] = []
        self._started = threading.Semaphore(0)
        self._through = threading.Semaphore(0)

    def __call__(self, events: list[Any], deadline: float | None = None) -> None:
        self.sends.append(list(events))
        self.deadlines.append(deadline)
        self._started.release()
        if not self._through.acquire(timeout=WAIT_S):
            raise AssertionError(f"the send of {events} was never let through")
        if self.raise_for is not None and self.raise_for[0] in events:
            raise self.raise_for[1]

    def entered(self) -> None:
        """Wait until the next send has started (it holds until let through)."""
        assert self._started.acquire(timeout=WAIT_S), f"no send started within {WAIT_S} s"

    def let_through(self, sends: int = 1) -> None:
        """Let this many sends finish (the held one and those to come)."""
        self._through.release(sends)


#: How long a test waits for a state of the coalescer before it fails naming what it waited for.
WAIT_S = 10.0


def wait_queued(coalescer: Coalescer, count: int) -> None:
    """Until ``count`` calls wait in the coalescer's queue (behind the send in flight)."""
    wait_for(lambda: len(coalescer._pending) == count, WAIT_S, f"{count} call(s) queued", interval_s=0.001)


@pytest.fixture(autouse=True)
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here even when the suite runs where SIGINT is ignored (a shell's background
    job): the tests below send one."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def on_sigint() -> Callable[[], None]:
    """Make SIGINT raise KeyboardInterrupt in the main thread (call it there); the function returned, called from
    another thread, sends a real SIGINT to the main thread (blocked in a lock) and returns once the handler ran
    (the KeyboardInterrupt is being raised there)."""
    handled = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        handled.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)  # the autouse fixture puts the previous handler back
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        signal.pthread_kill(main, signal.SIGINT)
        assert handled.wait(WAIT_S), "the SIGINT was not handled"

    return interrupt


def started(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def all_return(threads: list[threading.Thread]) -> bool:
    for thread in threads:
        thread.join(WAIT_S)
    return not any(thread.is_alive() for thread in threads)


def in_background(steps: Callable[[], None]) -> Future[None]:
    """Run ``steps`` in a thread while the main thread is blocked in a call; ``result()`` re-raises its failure."""
    executor = ThreadPoolExecutor(1)
    future = executor.submit(steps)
    executor.shutdown(wait=False)
    return future


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_an_interrupted_caller_carried_by_a_send_still_wakes_the_callers_after_it() -> None:
    send = Gate()
    coalescer = Coalescer(send, linger_s=0)
    first = started(coalescer.submit, ["first"])
    send.entered()  # "first" leads a held send: the next calls queue behind it
    leader = started(coalescer.submit, ["leader"])  # the oldest waiter: it will lead the next send
    wait_queued(coalescer, 1)
    later: list[threading.Thread] = []
    interrupt_main = on_sigint()

    def steps() -> None:
        wait_queued(coalescer, 2)  # the main thread's call, behind the leader
        for name in ("a", "b"):  # then two more, behind the main thread
            later.append(started(coalescer.submit, [name]))
            wait_queued(coalescer, 2 + len(later))
        send.let_through()  # "first" is sent: the leader leads the next send, carrying main, a and b
        send.entered()
        assert sorted(send.sends[1]) == ["a", "b", "leader", "main"]
        interrupt_main()  # during the send that carries its call
        send.let_through(2)  # that send, and the one after the test

    background = in_background(steps)
    with pytest.raises(KeyboardInterrupt):
        coalescer.submit(["main"])
    background.result(WAIT_S)
    assert all_return([first, leader, *later])  # woken through the chain, past the interrupted caller
    assert sorted(send.sends[1]) == ["a", "b", "leader", "main"]  # the main thread's event was sent
    coalescer.submit(["after"])  # and the coalescer goes on
    assert send.sends[2] == ["after"]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_an_interrupted_caller_that_no_send_took_yet_leaves_unsent() -> None:
    send = Gate()
    coalescer = Coalescer(send, linger_s=0)
    first = started(coalescer.submit, ["first"])
    send.entered()
    interrupt_main = on_sigint()

    def steps() -> None:
        wait_queued(coalescer, 1)  # the main thread's call waits for the send in flight
        interrupt_main()
        wait_queued(coalescer, 0)  # it left the queue
        send.let_through(2)  # "first", and the send after it

    background = in_background(steps)
    with pytest.raises(KeyboardInterrupt):
        coalescer.submit(["main"])
    background.result(WAIT_S)
    assert all_return([first])
    coalescer.submit(["after"])  # the lead was not left to a caller that went away
    assert [event for sent in send.sends for event in sent] == ["first", "after"]


def test_a_leader_interrupted_mid_send_still_tells_the_callers_it_carried() -> None:
    send = Gate(raise_for=("boom", KeyboardInterrupt()))
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
    send.entered()
    for name in ("boom", "a", "b"):  # "boom" queues first: it leads the next send, carrying a and b
        threads.append(started(call, name))
        wait_queued(coalescer, len(threads) - 1)
    send.let_through(3)  # "first"'s send, the one "boom" interrupts, and the one after the test
    assert all_return(threads)
    assert send.sends[1] == ["boom", "a", "b"]
    assert outcomes["first"] == "sent"
    assert outcomes["boom"] == "interrupted"
    assert "interrupted" in outcomes["a"]
    assert "may or may not have been sent" in outcomes["b"]
    coalescer.submit(["after"])
    assert send.sends[2] == ["after"]
