"""Fixed partitions (``seqproc worker --partitions 0-7``) that come back: the worker heartbeats, notices when another
worker took one of its partitions, and resumes it once that worker is gone.

Ticked from the consumer's loop by the same step as the leases of ``--partitions auto`` (``LeaseStep``), with the
same callbacks, so that a resumed partition starts exactly as a leased one does: the claim raises its epoch, the
previous owner's unacknowledged messages go back to the head of the queue, in order, then it is consumed.

- Every third of ``SEQPROC_LEASE_S``: heartbeat (:func:`.liveness.beat`), and compare the epochs it holds with the
  database's: one raised by another worker means a takeover; the partition is given up here (its held messages go
  back, its queue is no longer consumed) and the log names the worker that took it.
- Every ``WATCH_INTERVAL_S`` while some configured partition is held elsewhere: look whether its holder is gone
  (released at a graceful exit, or no heartbeat for ``SEQPROC_LEASE_S``). If so, claim it, but only if its owner is
  still the one seen: of several workers waiting for the same partition, one takes it and the others go on
  waiting for that one, so they converge on one owner instead of taking it from each other.
- Its fetch is fenced as an auto worker's is (transport option ``fetch_owner``): a claim sets each partition's
  fence, ``seqproc:lease:<queue>`` = its owner token (:func:`fence`), after raising the epochs and before handing
  back the unacknowledged messages. The worker it took them from then fetches nothing more from those queues, even
  before it notices the takeover. Every tick re-creates a fence of a partition held that the broker lost (``SET
  NX``: never over another worker's) and deletes the fences of partitions lost that still hold this worker's token
  (a claim that set its fence after a newer claimer's set his: the newer one re-creates it); a graceful exit deletes
  them all (:meth:`StaticOwnership.release_fences`). A fence has no time limit, since nothing would renew it: a killed
  worker leaves its fences behind, and the next claim overwrites them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from sqlalchemy import Connection, Engine

from seqproc.models.clients import bounded_retry, broker_client
from seqproc.models.errors import first_line
from seqproc.models.scripts import RELEASE_OWN_LEASE
from seqproc.models.settings import Settings
from seqproc.models.transport import Channel
from seqproc.models.wire import is_redis_url
from seqproc.worker.ops import metrics
from seqproc.worker.ownership.leases import lease_key
from seqproc.worker.ownership.liveness import BEATS_PER_LIMIT, beat, ownership
from seqproc.worker.ownership.partitions import claim

logger = logging.getLogger(__name__)

#: How often a worker waiting for one of its partitions looks whether it was released: a graceful exit hands the
#: partitions back within about this long.
WATCH_INTERVAL_S = 0.5


def fence(channel: Any, partitions: Iterable[int], owner: str) -> None:
    """Make ``owner`` the one worker whose fetch takes messages from ``partitions``' queues: their fences
    (``seqproc:lease:<queue>``) hold its token, and the fetch script of any other fenced worker takes nothing from
    them. Call it after the claim raised the epochs and before :func:`.partitions.restore_unacked`: what the previous
    owner fetched until then is in ``unacked`` and comes back first, in order; without the fence it would go on
    fetching newer messages until it noticed the takeover, and give them back behind later events of the same keys
    that this owner had applied meanwhile."""
    if not isinstance(channel, Channel):
        return  # kombu's own Redis transport (Sentinel): no fetch script to fence
    with channel.conn_or_acquire() as client:
        pipe = client.pipeline(transaction=False)
        for partition in partitions:
            pipe.set(lease_key(partition), owner)
        pipe.execute()


class StaticOwnership:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        owner: str,
        partitions: Sequence[int],
        epochs: dict[int, int],
        *,
        spec: str,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.owner = owner
        #: The partitions this worker was started for.
        self.partitions = sorted(partitions)
        #: partition -> the epoch held (the runtime's: the batcher drops a partition it finds fenced).
        self.epochs = epochs
        self.spec = spec
        self.interval_s = WATCH_INTERVAL_S
        self._next_beat_s = 0.0

    def keep_fences(self, channel: Any) -> None:
        """Each tick: the partitions held keep their fences, the partitions lost lose theirs (see the module's
        docstring). A fence deleted here was this worker's, on a partition it has given up (its held messages went
        back first)."""
        if not isinstance(channel, Channel):
            return
        held = sorted(self.epochs)
        lost = [p for p in self.partitions if p not in self.epochs]
        with channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for partition in held:
                pipe.set(lease_key(partition), self.owner, nx=True)
            for partition in lost:
                # By EVAL: a pipeline's EVALSHA cannot load the script on a server (a cluster's node) that lacks it.
                pipe.execute_command("EVAL", RELEASE_OWN_LEASE, 1, lease_key(partition), self.owner)
            replies = pipe.execute()
        for partition, created in zip(held, replies[: len(held)], strict=True):
            if created:
                logger.warning(
                    "partition %d: its fetch fence %s was gone from the broker (data lost?); set again",
                    partition,
                    lease_key(partition),
                )

    def release_fences(self) -> None:
        """On the way out: delete the fences that still hold this worker's token, so that none names a worker that
        is gone. A broker that cannot be reached is logged: the next claim of those partitions overwrites them."""
        if not is_redis_url(self.settings.broker_url):
            return
        # One pipeline, not tried again after a timeout: a broker gone silent must not hold the exit up.
        client = broker_client(self.settings, timeout_s=2, connect_timeout_s=2, retry=bounded_retry(on_timeout=False))
        try:
            pipe: Any = client.pipeline(transaction=False)
            for partition in self.partitions:
                pipe.execute_command("EVAL", RELEASE_OWN_LEASE, 1, lease_key(partition), self.owner)
            pipe.execute()
        except redis.RedisError as error:
            logger.warning(
                "could not delete the fetch fences of %s (%s); the next claim of those partitions overwrites them",
                self.owner,
                first_line(error),
            )
        finally:
            client.close()

    @property
    def waiting(self) -> list[int]:
        """Configured partitions another worker holds."""
        return [p for p in self.partitions if p not in self.epochs]

    def heartbeat(self) -> None:
        """Beat now (at start, before the consumer's loop ticks)."""
        with self.engine.begin() as conn:
            self._beat(conn)

    def _beat(self, conn: Connection) -> None:
        lost = beat(
            conn,
            self.owner,
            partitions=self.spec,
            liveness_s=self.settings.lease_s,
            loss_grace_s=self.settings.loss_grace_s,
        )
        # Counted as declared: the transaction ends right after (a rollback would declare them again, once more).
        metrics.count_lost(lost)
        self._next_beat_s = time.monotonic() + self.settings.lease_s / BEATS_PER_LIMIT

    def tick(
        self,
        *,
        on_acquire: Callable[[int, int], None] | None = None,
        on_release: Callable[[int], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
    ) -> None:
        """Heartbeat when due, give up the partitions taken over, resume those whose holder is gone.
        ``on_release`` is unused (a static worker never hands a partition back by itself)."""
        due = time.monotonic() >= self._next_beat_s
        waiting = self.waiting
        if not due and not waiting:
            return
        with self.engine.begin() as conn:
            if due:
                self._beat(conn)
            now = ownership(conn, self.partitions)
        for partition, epoch in sorted(self.epochs.items()):
            found = now.get(partition)
            if found is not None and found.epoch != epoch and found.last_owner != self.owner:
                logger.error(
                    "partition %d: taken over by %s with epoch %d (ours: %d); its consumer stops here, and resumes "
                    "it when that worker exits",
                    partition,
                    found.describe(),
                    found.epoch,
                    epoch,
                )
                self.epochs.pop(partition, None)
                if on_lost:
                    on_lost(partition)
        free: dict[int, str | None] = {}
        for partition in waiting:
            found = now.get(partition)
            if found is None or not found.live or found.last_owner == self.owner:
                free[partition] = found.last_owner if found is not None else None
        if not free:
            return
        epochs = claim(
            self.engine,
            sorted(free),
            owner=self.owner,
            total=self.settings.partitions,
            lock_timeout_s=self.settings.lease_s / 6,
            seen=free,
        )
        for partition in sorted(epochs):
            logger.info("partition %d: resumed, epoch %d", partition, epochs[partition])
            if on_acquire:
                on_acquire(partition, epochs[partition])
        for partition in sorted(set(free) - set(epochs)):
            logger.info("partition %d: another waiting worker resumed it first; waiting for that one", partition)
