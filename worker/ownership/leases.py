"""Partition leases in Redis (``seqproc worker --partitions auto``): workers share the partitions, take over those
of a worker that stopped renewing, and hand partitions back when one joins or leaves.

- A lease is ``seqproc:lease:seqproc.pNN`` = owner token, with a time limit (``SEQPROC_LEASE_S``), renewed every
  third of it by a compare-and-expire script (never renewing someone else's lease).
- Live workers heartbeat in ``seqproc:workers``; each aims at ``ceil(partitions / live workers)`` partitions,
  releasing its highest extras when there are more workers and taking free partitions when there are fewer.
- Taking a partition raises its fencing epoch in PostgreSQL first (a previous owner that is merely paused can no
  longer commit), then hands that owner's unacknowledged messages back to the head of the queue, in order, then
  consumes. A worker that cannot prove a recent renewal applies nothing (``fresh``) and gives its messages back.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable

import redis
from sqlalchemy import Engine

from seqproc.models.clients import bounded_retry, broker_client
from seqproc.models.errors import first_line
from seqproc.models.scripts import RELEASE_OWN_LEASE, RENEW_OWN_LEASE
from seqproc.models.settings import Settings
from seqproc.models.wire import WORKERS_KEY, queue_name
from seqproc.models.wire import lease_key as queue_lease_key
from seqproc.worker.ops import metrics
from seqproc.worker.ownership.liveness import beat
from seqproc.worker.ownership.partitions import claim, is_lock_timeout

logger = logging.getLogger(__name__)


def lease_key(partition: int) -> str:
    return queue_lease_key(queue_name(partition))


class LeaseManager:
    def __init__(self, settings: Settings, engine: Engine, owner: str, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.owner = owner
        # Each command bounded by the broker's socket timeout and never tried again after one: the tick runs in the
        # consumer's event loop, and a broker gone silent must not stall it (the next tick, a third of a lease
        # later, tries again; a renewal stays valid for 0.8 lease). A refusal or a reset (a failover) is retried.
        self.client = client or broker_client(
            settings, timeout_s=settings.broker_socket_timeout_s, retry=bounded_retry(on_timeout=False)
        )
        self.lease_ms = int(settings.lease_s * 1000)
        #: How often the consumer's loop ticks (renews): every third of the lease.
        self.interval_s = settings.lease_s / 3
        #: partition -> monotonic time until which we may apply to it (renewal time + lease - safety margin).
        self.valid_until: dict[int, float] = {}
        self._renew = self.client.register_script(RENEW_OWN_LEASE)
        self._release = self.client.register_script(RELEASE_OWN_LEASE)

    @property
    def owned(self) -> list[int]:
        return sorted(self.valid_until)

    def fresh(self, partition: int) -> bool:
        """True while our lease on ``partition`` is certainly still ours (renewed less than a lease ago, minus a
        margin for clock drift): only then may we apply to it."""
        return time.monotonic() < self.valid_until.get(partition, 0.0)

    def _validity(self, started: float) -> float:
        return started + self.settings.lease_s * 0.8

    def tick(
        self,
        *,
        on_acquire: Callable[[int, int], None] | None = None,
        on_release: Callable[[int], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
    ) -> bool:
        """Heartbeat, renew, then move towards a fair share. The callbacks let the consumer start and stop queues:
        ``on_acquire(partition, epoch)`` after the claim, ``on_release(partition)`` before a voluntary release (apply
        what is held, stop consuming), ``on_lost(partition)`` when a lease turned out to be gone. True: it ran out of
        its time for claims with free partitions left to take (a worker back from a partition takes all of its share
        again): the caller ticks again soon, after a turn of its event loop, rather than a third of a lease later."""
        started = time.monotonic()
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(WORKERS_KEY, {self.owner: now + self.settings.lease_s})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now)
        pipe.zcard(WORKERS_KEY)
        *_, live = pipe.execute()
        self._beat()
        for partition in self.owned:
            if self._renew(keys=[lease_key(partition)], args=[self.owner, self.lease_ms]):
                self.valid_until[partition] = self._validity(started)
            else:
                holder = self.client.get(lease_key(partition))
                logger.error(
                    "partition %d: lease lost (now held by %s); stopping",
                    partition,
                    holder.decode("utf-8", "replace") if isinstance(holder, bytes) else "nobody: it expired",
                )
                self.valid_until.pop(partition, None)
                if on_lost:
                    on_lost(partition)
        target = math.ceil(self.settings.partitions / max(1, int(live)))
        # The tick runs in the consumer's loop and renewed our leases only at its start: claims that wait on locked
        # rows must not make it outlast their validity. At most a quarter lease of claims per tick, each waiting a
        # sixth of one at most (twice, when it ends a stale session), so the next renewal comes within 0.6 lease.
        budget_until = started + self.settings.lease_s / 4
        for partition in reversed(self.owned[target:]):
            logger.info("partition %d: handing back (%d live workers, %d each)", partition, live, target)
            if on_release:
                on_release(partition)
            self.release(partition)
        for partition in self._candidates():
            if len(self.valid_until) >= target:
                break
            if time.monotonic() > budget_until:
                return True
            if self.client.set(lease_key(partition), self.owner, nx=True, px=self.lease_ms):
                self.valid_until[partition] = self._validity(started)
                try:
                    epoch = claim(
                        self.engine,
                        [partition],
                        owner=self.owner,
                        total=self.settings.partitions,
                        lock_timeout_s=self.settings.lease_s / 6,
                    )[partition]
                    logger.info("partition %d: acquired, epoch %d", partition, epoch)
                    if on_acquire:
                        on_acquire(partition, epoch)
                except Exception as error:
                    # Not consuming it after all (the previous owner's transaction still holds the partition, or
                    # the queue could not be started): let it go; the next tick, here or elsewhere, takes it again.
                    self.release(partition)
                    if not is_lock_timeout(error):
                        raise  # the database or the broker is away: the other candidates would fail alike
                    logger.warning("partition %d: its row is still locked by the previous owner; next tick", partition)
        return False

    def _beat(self) -> None:
        """The worker's heartbeat in PostgreSQL (``seqproc status`` counts live workers and owners by it). The
        leases alone decide who applies: a database that cannot be reached is no reason to let them go."""
        try:
            with self.engine.begin() as conn:
                lost = beat(
                    conn,
                    self.owner,
                    partitions="auto",
                    liveness_s=self.settings.lease_s,
                    loss_grace_s=self.settings.loss_grace_s,
                )
        except Exception as error:
            logger.warning("heartbeat not recorded in the database: %s", first_line(error))
            return
        metrics.count_lost(lost)  # committed

    def _candidates(self) -> list[int]:
        """Free partitions, starting from a place that depends on this worker, so that starting workers spread."""
        start = sum(self.owner.encode()) % self.settings.partitions
        order = [(start + i) % self.settings.partitions for i in range(self.settings.partitions)]
        pipe = self.client.pipeline(transaction=False)
        for partition in order:
            pipe.exists(lease_key(partition))
        taken = pipe.execute()
        return [p for p, exists in zip(order, taken, strict=True) if not exists and p not in self.valid_until]

    def release(self, partition: int) -> bool:
        """Hand ``partition``'s lease back; False if the broker could not be told (the lease then expires)."""
        self.valid_until.pop(partition, None)
        try:
            self._release(keys=[lease_key(partition)], args=[self.owner])
        except redis.RedisError:
            logger.warning("partition %d: could not release the lease; it expires by itself", partition)
            return False
        return True

    def release_all(self) -> None:
        """On the way out. A broker that does not answer is not asked again for each partition (a socket timeout
        apiece would hold the exit up): the leases left expire by themselves, within ``SEQPROC_LEASE_S``."""
        for partition in self.owned:
            if not self.release(partition):
                self.valid_until.clear()
                return
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(WORKERS_KEY, self.owner)
