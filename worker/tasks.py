"""The apply task. Thin: the worker runs it through the batching strategy (``worker.batching``); the body below
runs only when called directly (``.apply()``), applying one message's events in one transaction."""

from __future__ import annotations

from typing import Any

from celery import Task

from models.events import APPLY_TASK, parse_event
from producer.routing import partition_for
from worker import runtime
from worker.app import app
from worker.apply import apply_batch
from worker.consumer import FlushOnStop, LeaseStep


class ApplyTask(Task[Any, Any]):
    Strategy = "worker.batching:strategy"
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = False


@app.task(name=APPLY_TASK, base=ApplyTask, bind=True)
def apply_events(self: ApplyTask, partition: int, events: list[dict[str, Any]]) -> dict[str, int]:
    rt = runtime.current()
    parsed = [parse_event(raw) for raw in events]
    for event in parsed:
        home = partition_for(event.entity_key, rt.settings.partitions)
        if home != partition:
            raise ValueError(f"{event.entity_key} belongs to partition {home}, not {partition}")
    with rt.engine.begin() as conn:
        result = apply_batch(conn, partition, parsed, epoch=rt.epochs.get(partition))
    rt.outcomes.put_many([(e.id, o) for e, o in zip(parsed, result.outcomes, strict=True)])
    return {"applied": result.applied, "duplicate": result.duplicates, "rejected": result.rejected}


app.steps["consumer"].add(LeaseStep)
app.steps["consumer"].add(FlushOnStop)
