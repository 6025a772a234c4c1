"""The subscribers a worker's lifecycle hooks (``worker.hooks``) get at its start-up (``runtime.attach``).

- Celery's own tallies of tasks processed (``celery inspect stats``, the heartbeats' "processed");
- Flower's task events (``worker.consume.task_events``), when ``SEQPROC_TASK_EVENTS`` is on;
- the faults the environment configures (``worker.faults``), none otherwise;
- the user's, named by ``SEQPROC_HOOKS``.

The metrics (``worker.ops.metrics``) subscribe when the worker serves them (``SEQPROC_METRICS_PORT``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.worker import state as worker_state

from seqproc.models.wire import APPLY_TASK
from seqproc.worker import faults
from seqproc.worker.consume.task_events import FlowerEvents
from seqproc.worker.hooks import Settled, user_subscribers

if TYPE_CHECKING:
    from seqproc.worker.runtime import Runtime


class CeleryTallies:
    """``after_settle``: count one task processed per message, as if each had gone through Celery's per-message
    path (the batcher takes them around it)."""

    @staticmethod
    def after_settle(settled: Settled) -> None:
        worker_state.total_count[APPLY_TASK] += len(settled.messages)
        worker_state.all_total_count[0] += len(settled.messages)


def subscribe_all(rt: Runtime, batcher: Any) -> None:
    """Subscribe the built-in hooks, then ``SEQPROC_HOOKS``', to ``rt.hooks``; ``batcher``: the apply task's (its
    consumer sends the task events)."""
    hooks = rt.hooks
    hooks.subscribe(CeleryTallies)
    if rt.settings.task_events:
        flower = FlowerEvents(lambda: batcher.consumer)
        hooks.subscribe(flower)
        rt.on_stop.append(flower.flush)  # what waits goes out before the consumer's connection closes
    faults.subscribe(hooks)
    for subscriber in user_subscribers(rt.settings.hooks):
        hooks.subscribe(subscriber)
