"""The apply task. Thin: the worker runs it through its batching strategy (:meth:`ApplyTask.Strategy`: the batcher
of ``worker.consume.batching``, which the task owns); the body below runs only when called directly
(``.apply()``), applying one message's events in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task

from seqproc.models.events import parse_event
from seqproc.models.wire import APPLY_TASK, partition_for
from seqproc.worker.app import app
from seqproc.worker.consume.batching import Batcher
from seqproc.worker.consume.steps import ChunkStep, FlushOnStop, LeaseStep
from seqproc.worker.engine.apply import apply_batch
from seqproc.worker.runtime import Runtime


class ApplyTask(Task[Any, Any]):
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    typing = False
    #: The worker process's runtime and the batcher built around it (celery-batches keeps its buffer on the task
    #: too); set by :meth:`attach` before the consumer starts.
    runtime: Runtime | None = None
    batcher: Batcher | None = None

    def attach(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.batcher = Batcher(runtime)

    # celery-types declares Strategy as a dotted name; Celery resolves either (celery.utils.imports.instantiate).
    def Strategy(self, task: Task[Any, Any], app: Any, consumer: Any, **_: Any) -> Callable[..., None]:  # type: ignore[override]
        """Celery's Task.Strategy hook (as celery-batches' ``Batches.Strategy``): called at each consumer (re)start,
        returns the per-message handler of the task's batcher."""
        if self.batcher is None:
            raise RuntimeError("no seqproc runtime attached to the apply task: start workers with `seqproc worker`")
        return self.batcher.bind(consumer)


@app.task(name=APPLY_TASK, base=ApplyTask, bind=True)
def apply_events(
    self: ApplyTask, partition: int, events: list[dict[str, Any]], seq: list[Any] | None = None
) -> dict[str, int]:
    # ``seq`` (a direct publish's place in its producer's sequence) is checked by the batching consumer only; a
    # message run through this path (``.apply()``) is not counted in the loss detection.
    rt = self.runtime
    if rt is None:
        raise RuntimeError("no seqproc runtime attached: start workers with `seqproc worker`")
    parsed = [parse_event(raw) for raw in events]
    for event in parsed:
        home = partition_for(event.entity_key, rt.settings.partitions)
        if home != partition:
            raise ValueError(f"{event.entity_key} belongs to partition {home}, not {partition}")
    with rt.engine.begin() as conn:
        result = apply_batch(conn, partition, parsed, epoch=rt.epochs.get(partition))
    rt.outcomes.put_many([(str(e.id), o) for e, o in zip(parsed, result.outcomes, strict=True)])
    return {"applied": result.applied, "duplicate": result.duplicates, "rejected": result.rejected}


app.steps["consumer"].add(LeaseStep)
app.steps["consumer"].add(FlushOnStop)
app.steps["consumer"].add(ChunkStep)
