"""gunicorn's hooks for ``seqproc bench --server gunicorn`` (its other settings are on the command line)."""

from __future__ import annotations

from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    """In each worker, once forked: its own connections (the app was imported before the fork, ``--preload``)."""
    import seqproc_bench_wsgi

    seqproc_bench_wsgi.app.connect()
