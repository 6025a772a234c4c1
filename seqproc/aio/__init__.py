"""``seqproc.aio``: the producer calls as coroutines, for asyncio applications (see :mod:`seqproc.producer.aio`).

import seqproc.aio

receipt = await seqproc.aio.like(article_id, user_id)      # returns once the broker holds the event
outcome = await seqproc.aio.wait(receipt, timeout_s=5)     # optional: applied / duplicate / rejected
outcomes = await seqproc.aio.wait_all(await seqproc.aio.send_many([...]), timeout_s=30)

async with engine.begin() as conn:                         # an AsyncConnection, AsyncSession or psycopg's
    receipt = await seqproc.aio.outbox.like(conn, article_id, user_id)
"""

from seqproc.aio import outbox
from seqproc.producer.aio import api as _api
from seqproc.producer.aio.api import *  # noqa: F403 (the calls, wait, wait_all, aclose: as aio.api lists them)
from seqproc.producer.aio.notify import notifications
from seqproc.producer.aio.previews import preview, preview_article, preview_product

__all__ = ["notifications", "outbox", "preview", "preview_article", "preview_product"]
__all__ += _api.__all__
