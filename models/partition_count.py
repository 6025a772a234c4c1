"""The deployment's partition count: the one error every process gives when its ``SEQPROC_PARTITIONS`` differs, and
the check a producer runs each time it connects to the broker.

Routing is ``crc32(entity key) % SEQPROC_PARTITIONS``: a producer with another count than the workers sends keys to
partitions whose worker dead-letters them (wrong partition), and ``seqproc status`` with another count shows part of
the deployment. The count is fixed per deployment and recorded in seqproc's database (``seqproc_meta``). Who checks
it where:

- workers and relays, at start, against the database's record (``worker.ownership.partitions``);
- the outbox writers, in their own insert, against the outbox database's copy (``seqproc_outbox_meta``): no broker
  inside the caller's transaction, nothing cached that a ``seqproc partitions set`` could make stale;
- producers on the broker, against the broker's copy (:data:`~seqproc.models.wire.PARTITION_COUNT_KEY`), read by
  :class:`BrokerPartitionCount` when a connection opens (so once per process, and again after a reconnect), never
  per call.
"""

from __future__ import annotations

import logging
from typing import Any

from seqproc.models.errors import PartitionCountMismatch
from seqproc.models.wire import PARTITION_COUNT_KEY

logger = logging.getLogger(__name__)


def mismatch(configured: int, recorded: int | str, *, where: str) -> PartitionCountMismatch:
    """The error of a process whose ``SEQPROC_PARTITIONS`` (``configured``) is not the deployment's (``recorded``,
    as ``where`` holds it: "this database", "the broker", ...)."""
    return PartitionCountMismatch(
        f"SEQPROC_PARTITIONS is {configured} but {where} was set up with {recorded} partitions; routing with another "
        f"count sends keys to the wrong partitions: set SEQPROC_PARTITIONS={recorded} for this process, or, to change "
        f"the deployment's count, stop the producers, drain the queues, then run `seqproc partitions set {configured}`"
    )


class BrokerPartitionCount:
    """A producer's check of the count the broker publishes, run by redis-py as each connection opens (its
    ``redis_connect_func``: the handshake, then one GET). A mismatch closes the connection and raises
    :class:`PartitionCountMismatch` (nothing is sent; the next attempt connects and checks again). A broker that
    publishes no count yet (nothing ran ``seqproc migrate`` or a worker against it since it was emptied) is logged
    once and the connection is used unchecked."""

    def __init__(self, configured: int) -> None:
        self.configured = configured
        self._warned = False

    def on_connect(self, connection: Any) -> None:
        """For a blocking ``redis.Connection``."""
        connection.on_connect()
        connection.send_command("GET", PARTITION_COUNT_KEY, check_health=False)
        error = self.verify(connection.read_response())
        if error is not None:
            connection.disconnect()  # redis-py before 6 leaves the socket open after an error that is not its own
            raise error

    async def on_connect_async(self, connection: Any) -> None:
        """For a ``redis.asyncio.Connection``."""
        await connection.on_connect()
        await connection.send_command("GET", PARTITION_COUNT_KEY, check_health=False)
        error = self.verify(await connection.read_response())
        if error is not None:
            await connection.disconnect()
            raise error

    def verify(self, published: bytes | str | None) -> PartitionCountMismatch | None:
        """The error for the broker's value of :data:`PARTITION_COUNT_KEY`, None when it matches (or is missing)."""
        if published is None:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "the broker publishes no partition count (%s): sending with SEQPROC_PARTITIONS=%d unchecked; "
                    "`seqproc migrate` or a worker's start publishes it",
                    PARTITION_COUNT_KEY,
                    self.configured,
                )
            return None
        recorded = int(published)
        if recorded == self.configured:
            return None
        return mismatch(self.configured, recorded, where="the deployment (as the broker publishes it)")
