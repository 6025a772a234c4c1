"""Fault injection for the fault tests: inert unless a ``SEQPROC_FAULT_*`` variable is set in the process's env.

``SEQPROC_FAULT_EXIT_AFTER_COMMITS=N``: the process dies (``os._exit(137)``, as SIGKILL would leave it) right after
its N-th commit, before publishing outcomes or acking: the case where redelivery must report ``duplicate``.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

EXIT_AFTER_COMMITS_ENV = "SEQPROC_FAULT_EXIT_AFTER_COMMITS"
#: ``SEQPROC_FAULT_JOB_DELAY_S=S``: every scheduled job sleeps S seconds before it writes (a slow or stuck job).
JOB_DELAY_ENV = "SEQPROC_FAULT_JOB_DELAY_S"

#: ``SEQPROC_FAULT_APPLY_DELAY_S=S``: every flush sleeps S seconds before its transaction (a slow database): the
#: event loop stalls, so what is sent meanwhile waits in the queue (the backlog that the lag figures must show).
APPLY_DELAY_ENV = "SEQPROC_FAULT_APPLY_DELAY_S"

#: ``SEQPROC_FAULT_RELAY_PUSHED_DELAY_S=S``: the relay sleeps S seconds after its pushes, before the transaction that
#: records them commits (a relay killed then has pushed messages it never recorded: the next pass sends them again).
RELAY_PUSHED_DELAY_ENV = "SEQPROC_FAULT_RELAY_PUSHED_DELAY_S"

_exit_after = int(os.environ.get(EXIT_AFTER_COMMITS_ENV, "0") or 0)
_commits = 0


def after_commit() -> None:
    global _commits
    if not _exit_after:
        return
    _commits += 1
    if _commits >= _exit_after:
        logger.critical("fault injection: exiting after commit %d, before ack", _commits)
        logging.shutdown()
        os._exit(137)


def apply_delay() -> None:
    delay_s = float(os.environ.get(APPLY_DELAY_ENV, "0") or 0)
    if delay_s:
        logger.warning("fault injection: flush sleeping %.1f s before it applies", delay_s)
        time.sleep(delay_s)


def job_delay() -> None:
    delay_s = float(os.environ.get(JOB_DELAY_ENV, "0") or 0)
    if delay_s:
        logger.warning("fault injection: job sleeping %.1f s before it writes", delay_s)
        time.sleep(delay_s)


def relay_pushed_delay() -> None:
    delay_s = float(os.environ.get(RELAY_PUSHED_DELAY_ENV, "0") or 0)
    if delay_s:
        time.sleep(delay_s)
