"""``seqproc.outbox``: enqueue inside your own database transaction (see :mod:`seqproc.producer.outbox`).

with engine.begin() as conn:
    receipt = seqproc.outbox.like(conn, article_id, user_id)
"""

from seqproc.producer import outbox as _outbox
from seqproc.producer.outbox import *  # noqa: F403 (the calls, write, OutboxConnectionError: as it lists them)

__all__: list[str] = []
__all__ += _outbox.__all__
