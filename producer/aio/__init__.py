"""seqproc's producer for asyncio: the calls of :mod:`seqproc.producer` as coroutines, on ``redis.asyncio``.

    import seqproc.aio
    receipt = await seqproc.aio.like(article_id, user_id)         # returns once the broker holds the event
    outcome = await seqproc.aio.wait(receipt, timeout_s=5)        # optional: applied / duplicate / rejected
    async with engine.begin() as conn:                            # inside your own transaction
        receipt = await seqproc.aio.outbox.like(conn, article_id, user_id)

Concurrent calls of one event loop share messages (group commit, :mod:`seqproc.producer.aio.coalesce`); every loop
has its own connections (:mod:`seqproc.producer.aio.loops`). Imports nothing from ``worker``.
"""

from seqproc.producer.aio import api as _api
from seqproc.producer.aio import outbox
from seqproc.producer.aio.api import *  # noqa: F403 (the calls, wait, wait_all, aclose: as aio.api lists them)
from seqproc.producer.aio.api import publisher
from seqproc.producer.aio.notify import notifications
from seqproc.producer.aio.previews import preview, preview_article, preview_product

__all__ = ["notifications", "outbox", "preview", "preview_article", "preview_product", "publisher"]
__all__ += _api.__all__
