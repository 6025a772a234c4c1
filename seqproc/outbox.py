"""``seqproc.outbox``: enqueue inside your own database transaction (see :mod:`seqproc.producer.outbox`).

with engine.begin() as conn:
    receipt = seqproc.outbox.like(conn, article_id, user_id)
"""

from seqproc.producer.outbox import (
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
