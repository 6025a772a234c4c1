"""Group commit on one event loop: concurrent coroutines share sends, each returns only once its events were sent,
a failure reaches exactly the callers whose events the failed send carried, and a cancelled caller disturbs no one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from seqproc.models.errors import PublishError
from seqproc.producer.aio.coalesce import AsyncCoalescer


class Recorder:
    """An async send: a broker round trip of ``delay_s`` (other calls queue meanwhile), then recorded, unless
    ``fail_when`` says this send fails."""

    def __init__(self, delay_s: float = 0.002, fail_when: Any = None) -> None:
        self.sends: list[list[Any]] = []
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, events: list[Any], deadline: float | None = None) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.fail_when is not None and self.fail_when(events):
                raise ConnectionError("broker gone")
            self.sends.append(list(events))
        finally:
            self.in_flight -= 1

    def sent(self) -> list[Any]:
        return [event for send in self.sends for event in send]


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_concurrent_calls_share_sends_and_return_after_their_events_are_sent() -> None:
    recorder = Recorder()
    coalescer = AsyncCoalescer(recorder, linger_s=0)
    returned_before_sent: list[Any] = []

    async def call(n: int) -> None:
        for i in range(20):
            event = (n, i)
            await coalescer.submit([event])
            if event not in recorder.sent():
                returned_before_sent.append(event)

    async def main() -> None:
        await asyncio.gather(*(call(n) for n in range(50)))

    run(main())
    assert returned_before_sent == []
    assert sorted(recorder.sent()) == sorted((n, i) for n in range(50) for i in range(20))
    assert len(recorder.sends) <= 25  # 1,000 calls: each send carried every caller's next call (about 50)
    assert recorder.most_in_flight == 1
    for n in range(50):  # each caller's events stay in its order
        mine = [i for (m, i) in recorder.sent() if m == n]
        assert mine == list(range(20))


def test_calls_made_during_a_send_all_go_in_the_next_one() -> None:
    recorder = Recorder(delay_s=0.05)
    coalescer = AsyncCoalescer(recorder, linger_s=0)

    async def main() -> None:
        first = asyncio.ensure_future(coalescer.submit(["first"]))
        await asyncio.sleep(0.01)  # the first send is in flight
        await asyncio.gather(*(coalescer.submit([n]) for n in range(100)), first)

    run(main())
    assert recorder.sends == [["first"], list(range(100))]


def test_a_lone_call_sends_at_once() -> None:
    recorder = Recorder(delay_s=0)
    coalescer = AsyncCoalescer(recorder, linger_s=0.5)

    async def main() -> float:
        started = time.monotonic()
        for n in range(5):
            await coalescer.submit([n])
        return time.monotonic() - started

    assert run(main()) < 0.5  # five calls, not five lingers
    assert recorder.sends == [[n] for n in range(5)]


def test_linger_gathers_more_calls_per_send_under_concurrency() -> None:
    """Once a send carried several calls, the next waits (up to the linger) for as many again."""
    sends: dict[float, list[list[Any]]] = {}
    for linger_s in (0.0, 0.05):
        recorder = Recorder(delay_s=0.002)
        coalescer = AsyncCoalescer(recorder, linger_s=linger_s)

        async def call(n: int, coalescer: AsyncCoalescer = coalescer) -> None:
            for i in range(10):
                await coalescer.submit([(n, i)])
                await asyncio.sleep(0.001 * (n % 3))  # callers out of step: without linger they straggle into sends

        async def main(call: Any = call) -> None:
            await asyncio.gather(*(call(n) for n in range(8)))

        run(main())
        assert sorted(recorder.sent()) == sorted((n, i) for n in range(8) for i in range(10))
        sends[linger_s] = recorder.sends
    assert len(sends[0.05]) < len(sends[0.0])


def test_a_failed_send_raises_for_its_callers_only_and_later_sends_work() -> None:
    recorder = Recorder(fail_when=lambda events: "bad" in events)
    coalescer = AsyncCoalescer(recorder, linger_s=0)
    failures: list[Any] = []

    async def call(item: Any) -> None:
        try:
            await coalescer.submit([item])
        except PublishError as error:
            failures.append((item, "NOT sent" in str(error)))

    async def main() -> None:
        with pytest.raises(PublishError, match="ConnectionError: broker gone; the events were NOT sent"):
            await coalescer.submit(["bad"])
        await coalescer.submit(["good"])
        first = asyncio.ensure_future(call("first"))
        await asyncio.sleep(0)  # "first" is in flight alone; the next eight share one send, "bad" among them
        await asyncio.gather(first, *(call("bad" if n == 0 else n) for n in range(8)))
        await coalescer.submit(["after"])

    run(main())
    # Exactly the callers of the failed send, each told that its event was not sent.
    assert sorted(failures, key=lambda failure: str(failure[0])) == [*((n, True) for n in range(1, 8)), ("bad", True)]
    assert recorder.sent() == ["good", "first", "after"]


def test_a_caller_cancelled_before_any_send_took_it_leaves_unsent() -> None:
    recorder = Recorder(delay_s=0.05)
    coalescer = AsyncCoalescer(recorder, linger_s=0)

    async def main() -> None:
        first = asyncio.ensure_future(coalescer.submit(["first"]))
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(coalescer.submit(["cancelled"]))
        others = [asyncio.ensure_future(coalescer.submit([n])) for n in range(3)]
        await asyncio.sleep(0.01)
        queued.cancel()  # still queued behind the send in flight
        await asyncio.gather(first, *others)
        assert queued.cancelled()

    run(main())
    assert recorder.sends == [["first"], [0, 1, 2]]


def test_a_caller_cancelled_mid_send_does_not_interrupt_the_send_of_the_others() -> None:
    """A send runs in a task of its own: cancelling one of its callers (a client that went away, a timeout) cancels
    that caller only; the send, and every other caller it carries, completes."""
    recorder = Recorder(delay_s=0.05)
    coalescer = AsyncCoalescer(recorder, linger_s=0)

    async def main() -> None:
        callers = [asyncio.ensure_future(coalescer.submit([n])) for n in range(5)]
        await asyncio.sleep(0.01)  # all five in flight, in one send
        callers[0].cancel()  # the one that started the send
        callers[3].cancel()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert [type(r).__name__ for r in results] == [
            "CancelledError",
            "NoneType",
            "NoneType",
            "CancelledError",
            "NoneType",
        ]
        await coalescer.submit(["after"])

    run(main())
    assert recorder.sends == [[0, 1, 2, 3, 4], ["after"]]  # the cancelled callers' events went anyway


def test_a_send_that_raises_something_unexpected_still_fails_only_its_callers() -> None:
    async def send(events: list[Any], deadline: float | None = None) -> None:
        await asyncio.sleep(0)
        if "odd" in events:
            raise ValueError("unexpected")

    coalescer = AsyncCoalescer(send, linger_s=0)

    async def main() -> None:
        with pytest.raises(PublishError, match="ValueError: unexpected; the events were NOT sent"):
            await coalescer.submit(["odd"])
        await coalescer.submit(["fine"])

    run(main())


def test_the_sender_ends_when_nothing_is_queued_and_the_next_call_starts_one() -> None:
    """No task outlives the calls: each run of a loop here starts its own sender and ends with it."""
    recorder = Recorder(delay_s=0)
    coalescer = AsyncCoalescer(recorder, linger_s=0)
    for n in range(3):
        run(coalescer.submit([n]))
    assert recorder.sent() == [0, 1, 2]


def test_a_sender_cancelled_mid_send_tells_every_caller_and_the_next_call_starts_another() -> None:
    """The loop shutting down cancels the sender task: the callers of its send hear that their events may or may
    not have been sent, the queued ones that theirs were not; no one waits forever."""
    recorder = Recorder(delay_s=0.2)
    coalescer = AsyncCoalescer(recorder, linger_s=0)

    async def main() -> list[str]:
        carried = asyncio.ensure_future(coalescer.submit(["carried"]))
        await asyncio.sleep(0.05)  # its send is in flight
        queued = asyncio.ensure_future(coalescer.submit(["queued"]))
        await asyncio.sleep(0)
        [sender] = coalescer._tasks
        sender.cancel()
        results = await asyncio.gather(carried, queued, return_exceptions=True)
        await coalescer.submit(["after"])
        return [str(result) for result in results]

    carried, queued = run(main())
    assert "may or may not have been sent" in carried
    assert "the events were NOT sent" in queued
    assert recorder.sent() == ["after"]
