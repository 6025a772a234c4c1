"""Fault injection for the fault tests: inert unless a ``SEQPROC_FAULT_*`` variable is set in the process's env.

The worker's two faults are subscribers of its lifecycle hooks (``worker.hooks``), subscribed at its start-up only
when their variable is set (:func:`subscribe`): without one, nothing of this module runs when a batch is applied.

``SEQPROC_FAULT_EXIT_AFTER_COMMITS=N``: the process dies (``os._exit(137)``, as SIGKILL would leave it) right after
its N-th commit (``after_commit``), before publishing outcomes or acking: the case where redelivery must report
``duplicate``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from seqproc.worker.hooks import Hooks

logger = logging.getLogger(__name__)

EXIT_AFTER_COMMITS_ENV = "SEQPROC_FAULT_EXIT_AFTER_COMMITS"
#: ``SEQPROC_FAULT_JOB_DELAY_S=S``: every scheduled job sleeps S seconds before it writes (a slow or stuck job).
JOB_DELAY_ENV = "SEQPROC_FAULT_JOB_DELAY_S"

#: ``SEQPROC_FAULT_APPLY_DELAY_S=S``: every flush sleeps S seconds before its transaction (``before_flush``: a slow
#: database): the event loop stalls, so what is sent meanwhile waits in the queue (the backlog that the lag figures
#: must show).
APPLY_DELAY_ENV = "SEQPROC_FAULT_APPLY_DELAY_S"

#: ``SEQPROC_FAULT_RELAY_PUSHED_DELAY_S=S``: the relay sleeps S seconds after its pushes, before the transaction that
#: records them commits (a relay killed then has pushed messages it never recorded: the next pass sends them again).
RELAY_PUSHED_DELAY_ENV = "SEQPROC_FAULT_RELAY_PUSHED_DELAY_S"


def subscribe(hooks: Hooks) -> None:
    """Subscribe the faults the environment configures (none: nothing) to a worker's ``hooks``."""
    exit_after = int(os.environ.get(EXIT_AFTER_COMMITS_ENV, "0") or 0)
    if exit_after:
        hooks.add("after_commit", ExitAfterCommits(exit_after))
    delay_s = float(os.environ.get(APPLY_DELAY_ENV, "0") or 0)
    if delay_s:
        hooks.add("before_flush", lambda _flush: _sleep(delay_s, "flush sleeping %.1f s before it applies"))


class ExitAfterCommits:
    """``after_commit``: exit the process at its ``limit``-th commit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.commits = 0

    def __call__(self, _committed: Any) -> None:
        self.commits += 1
        if self.commits >= self.limit:
            logger.critical("fault injection: exiting after commit %d, before ack", self.commits)
            logging.shutdown()
            os._exit(137)


def job_delay() -> None:
    delay_s = float(os.environ.get(JOB_DELAY_ENV, "0") or 0)
    if delay_s:
        _sleep(delay_s, "job sleeping %.1f s before it writes")


def _sleep(delay_s: float, what: str) -> None:
    logger.warning("fault injection: " + what, delay_s)
    time.sleep(delay_s)


def relay_pushed_delay() -> None:
    delay_s = float(os.environ.get(RELAY_PUSHED_DELAY_ENV, "0") or 0)
    if delay_s:
        time.sleep(delay_s)
