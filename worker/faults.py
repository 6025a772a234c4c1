"""Fault injection for the fault tests: inert unless a ``SEQPROC_FAULT_*`` variable is set in the worker's env.

``SEQPROC_FAULT_EXIT_AFTER_COMMITS=N``: the process dies (``os._exit(137)``, as SIGKILL would leave it) right after
its N-th commit, before publishing outcomes or acking: the case where redelivery must report ``duplicate``.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

EXIT_AFTER_COMMITS_ENV = "SEQPROC_FAULT_EXIT_AFTER_COMMITS"

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
