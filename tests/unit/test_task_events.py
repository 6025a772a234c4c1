"""The task events the worker writes for Flower decode to what Celery's EventDispatcher would send."""

from __future__ import annotations

import ast
import json
import threading
from types import SimpleNamespace
from typing import Any

from celery.events.event import Event
from celery.utils.time import utcoffset
from kombu.clocks import LamportClock

from seqproc.models.outcomes import Outcome
from seqproc.models.wire import APPLY_TASK
from seqproc.worker.consume import task_events
from seqproc.worker.consume.task_events import Settled

APPLIED, DUPLICATE, REJECTED = Outcome("applied"), Outcome("duplicate"), Outcome("rejected", "sold out")


class Producer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[tuple[Any, dict[str, Any]]] = []

    def publish(self, body: Any, **options: Any) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.published.append((body, options))


def dispatcher(producer: Producer | None = None, **overrides: Any) -> Any:
    from collections import deque

    fields = {
        "enabled": True,
        "groups": None,
        "hostname": 'seqproc-p0-15@host "a"',
        "pid": 4242,
        "clock": LamportClock(),
        "producer": producer or Producer(),
        "mutex": threading.Lock(),
        "exchange": SimpleNamespace(name="celeryev"),
        "headers": {"hostname": "h"},
        "delivery_mode": 1,
        "serializer": "json",
        "buffer_while_offline": True,
        "_outbound_buffer": deque(),
    }
    return SimpleNamespace(**(fields | overrides))


MESSAGES = [
    Settled("abcDEF-12_x1", 3, 1, 0),
    Settled(None, 3, 1, 0),  # no task id (not a Celery message): its outcome counts, no events
    Settled('odd"id\\', 3, 3, 1),
]
OUTCOMES = [APPLIED, APPLIED, APPLIED, DUPLICATE, REJECTED]


def test_the_events_are_the_dispatchers_fields_for_each_message() -> None:
    d = dispatcher()
    text = task_events.events_json(d, MESSAGES, OUTCOMES, 0.0125)
    assert text is not None
    events = json.loads(text)
    clock = 0
    expected = []
    for message, mine in ((MESSAGES[0], [APPLIED]), (MESSAGES[2], [APPLIED, DUPLICATE, REJECTED])):
        counts = {s: sum(o.status == s for o in mine) for s in ("applied", "duplicate", "rejected")}
        for kind, fields in (
            (
                "task-received",
                {
                    "name": APPLY_TASK,
                    "args": "()",
                    "kwargs": repr({"partition": 3, "events": message.events, "invalid": message.dead_letters}),
                },
            ),
            ("task-succeeded", {"result": repr(counts | {"dead_lettered": message.dead_letters}), "runtime": 0.0125}),
        ):
            clock += 1
            expected.append(
                Event(
                    kind,
                    hostname=d.hostname,
                    utcoffset=utcoffset(),
                    pid=d.pid,
                    clock=clock,
                    uuid=message.task_id,
                    timestamp=0.0,
                    **fields,
                )
            )
    assert [e.pop("timestamp") > 0 for e in events] == [True] * 4
    assert events == [{k: v for k, v in e.items() if k != "timestamp"} for e in expected]
    assert ast.literal_eval(events[3]["result"]) == {"applied": 1, "duplicate": 1, "rejected": 1, "dead_lettered": 1}


def test_published_as_one_task_multi_message() -> None:
    producer = Producer()
    task_events.publish(dispatcher(producer), MESSAGES, OUTCOMES, 0.01)
    [(body, options)] = producer.published
    assert options["routing_key"] == "task.multi"
    assert options["content_type"] == "application/json"
    assert [e["type"] for e in json.loads(body)] == ["task-received", "task-succeeded"] * 2


def test_nothing_when_task_events_are_off_and_kept_for_later_when_the_broker_fails() -> None:
    producer = Producer()
    task_events.publish(dispatcher(producer, groups=["worker"]), MESSAGES, OUTCOMES, 0.01)
    task_events.publish(dispatcher(producer, enabled=False), MESSAGES, OUTCOMES, 0.01)
    assert producer.published == []

    failing = dispatcher(Producer(fail=True))
    task_events.publish(failing, MESSAGES, OUTCOMES, 0.01)  # never raises
    [(events, routing_key)] = failing._outbound_buffer  # what EventDispatcher keeps for its next flush
    assert routing_key == "task.multi"
    assert [e["uuid"] for e in events] == [MESSAGES[0].task_id] * 2 + [MESSAGES[2].task_id] * 2


class Timer:
    """A consumer's timer whose entries fire when the test says so."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, Any]] = []

    def call_after(self, seconds: float, fun: Any) -> Any:
        entry = SimpleNamespace(fun=fun, cancelled=False)
        entry.cancel = lambda: setattr(entry, "cancelled", True)
        self.entries.append((seconds, entry))
        return entry

    def fire(self) -> None:
        entries, self.entries = self.entries, []
        for _, entry in entries:
            if not entry.cancelled:
                entry.fun()


def settled(task_id: str) -> Any:
    decoded = SimpleNamespace(task_id=task_id, partition=3, events=[object()], dead_letters=[])
    return SimpleNamespace(messages=[decoded], outcomes=[APPLIED], elapsed_s=0.001)


def test_the_batches_settled_within_the_interval_go_out_in_one_publish() -> None:
    producer, timer = Producer(), Timer()
    consumer = SimpleNamespace(event_dispatcher=dispatcher(producer), timer=timer, hub=object())
    flower = task_events.FlowerEvents(lambda: consumer)
    flower.after_settle(settled("t1"))
    flower.after_settle(settled("t2"))
    assert producer.published == []  # waiting for the timer
    assert [seconds for seconds, _ in timer.entries] == [task_events.TASK_EVENTS_INTERVAL_S]  # one timer, not two
    timer.fire()
    [(body, _)] = producer.published
    assert [e["uuid"] for e in json.loads(body)] == ["t1", "t1", "t2", "t2"]
    flower.after_settle(settled("t3"))
    flower.flush()  # the consumer stops: what waits goes out now, and its timer is cancelled
    assert [e["uuid"] for e in json.loads(producer.published[-1][0])] == ["t3", "t3"]
    timer.fire()
    assert len(producer.published) == 2


def test_without_an_event_loop_or_past_the_limit_they_go_at_once() -> None:
    producer = Producer()
    alone = SimpleNamespace(event_dispatcher=dispatcher(producer), timer=None, hub=None)
    task_events.FlowerEvents(lambda: alone).after_settle(settled("t1"))
    assert len(producer.published) == 1
    timer = Timer()
    busy = SimpleNamespace(event_dispatcher=dispatcher(producer), timer=timer, hub=object())
    flower = task_events.FlowerEvents(lambda: busy)
    for n in range(task_events.TASK_EVENTS_MAX_MESSAGES):
        flower.after_settle(settled(f"m{n}"))
    assert len(producer.published) == 2  # the last one reached the limit
    assert len(json.loads(producer.published[-1][0])) == 2 * task_events.TASK_EVENTS_MAX_MESSAGES
