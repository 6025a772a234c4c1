"""``seqproc.aio.outbox``: enqueue inside your own asynchronous transaction (see :mod:`seqproc.producer.aio.outbox`).

async with engine.begin() as conn:
    receipt = await seqproc.aio.outbox.like(conn, article_id, user_id)
"""

from seqproc.producer.aio.outbox import (
    OutboxConnectionError,
    commit,
    like,
    release,
    reserve,
    restock,
    send,
    send_many,
    unlike,
    write,
)

__all__ = [
    "OutboxConnectionError",
    "commit",
    "like",
    "release",
    "reserve",
    "restock",
    "send",
    "send_many",
    "unlike",
    "write",
]
