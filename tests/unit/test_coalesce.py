"""Group commit: concurrent calls share sends, each returns only once its events were sent, failures reach exactly
the callers whose events were in the failed send."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from models.errors import PublishError
from producer.coalesce import Coalescer


class Recorder:
    def __init__(self, delay_s: float = 0.002, fail_when: Any = None) -> None:
        self.sends: list[list[Any]] = []
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.lock = threading.Lock()

    def __call__(self, events: list[Any]) -> None:
        time.sleep(self.delay_s)  # a broker round trip, during which other calls queue up
        if self.fail_when is not None and self.fail_when(events):
            raise ConnectionError("broker gone")
        with self.lock:
            self.sends.append(list(events))

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
