"""``seqproc.aio.outbox``: enqueue inside your own asynchronous transaction (see :mod:`seqproc.producer.aio.outbox`).

async with engine.begin() as conn:
    receipt = await seqproc.aio.outbox.like(conn, article_id, user_id)
"""

from seqproc.producer.aio import outbox as _outbox
from seqproc.producer.aio.outbox import *  # noqa: F403 (the calls, write, OutboxConnectionError: as it lists them)

__all__: list[str] = []
__all__ += _outbox.__all__
