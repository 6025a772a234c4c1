"""An outbox database's identity, and its copy of the deployment's partition count (``seqproc_outbox_meta``).

Several applications, each with its own outbox database, may share one broker. Their relays count the messages they
push onto each partition queue in the broker (loss detection, see :mod:`seqproc.worker.relay`); one counter shared
by two outboxes would move under each relay's feet (a false "a relay died after pushing", and a real loss hidden
among the other's pushes). So each outbox database gets an id of its own (its migration makes one) and its relays'
counters are keyed by it: ``seqproc:relay:pushed:<outbox id>:{<queue>}`` (in the queue's Redis Cluster slot).

Upgrading from older counters (``seqproc:relay:pushed:<outbox id>:<queue>``, outside the queue's slot, or the shared
``seqproc:relay:pushed:<queue>`` before that): a relay that finds no counter of its own for a partition it already
pushed to takes the first older counter's value it finds, capped at the count it recorded (:func:`adopt_counters`),
once, before its first push. The old counter was at least this outbox's record unless the broker lost messages, so:
no false loss (no resend storm), no false "relay died after pushing", and a loss the broker had before the upgrade
(old counter below the record) is still seen and sent again. Stop the relays of the previous version before starting
the new ones: the two count under different keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import redis
from sqlalchemy import Connection, Engine, select

from seqproc.models.db import upsert
from seqproc.models.errors import ConfigError
from seqproc.models.scripts import ADOPT_SHARED_RELAY_COUNT
from seqproc.models.settings import mask_url
from seqproc.models.tables.base import table_of
from seqproc.models.tables.outbox import OUTBOX_ID, OUTBOX_PARTITION_COUNT, OutboxMeta
from seqproc.models.wire import legacy_relay_pushed_keys, queue_name, relay_pushed_key

OUTBOX_META = table_of(OutboxMeta)


def outbox_id(outbox: Engine) -> str:
    """The id of the outbox database ``outbox`` (made by its migration, or by :func:`ensure_outbox_id`)."""
    with outbox.connect() as conn:
        found = conn.execute(select(OUTBOX_META.c.value).where(OUTBOX_META.c.name == OUTBOX_ID)).scalar_one_or_none()
    if found is None:
        raise ConfigError(f"the outbox in {mask_url(str(outbox.url))} has no id: run `seqproc migrate` (it makes one)")
    return str(found)


def ensure_outbox_id(outbox: Engine) -> str:
    """The outbox's id, made now if its row is gone (deleted by hand: the relays' counters under the old id are then
    lost to them, and they send their unapplied events again, as after a broker loss)."""
    with outbox.begin() as conn:
        conn.execute(
            upsert(conn, OUTBOX_META).on_conflict_do_nothing(index_elements=[OUTBOX_META.c.name]),
            {"name": OUTBOX_ID, "value": uuid.uuid4().hex},
        )
    return outbox_id(outbox)


def record_outbox_partition_count(outbox: Engine, count: int, *, conn: Connection | None = None) -> None:
    """Write the deployment's partition count into the outbox database (in ``conn``'s transaction when given: the
    outbox lives in seqproc's own database)."""
    if conn is None:
        with outbox.begin() as own:
            record_outbox_partition_count(outbox, count, conn=own)
        return
    statement = upsert(conn, OUTBOX_META)
    conn.execute(
        statement.on_conflict_do_update(index_elements=[OUTBOX_META.c.name], set_={"value": statement.excluded.value}),
        {"name": OUTBOX_PARTITION_COUNT, "value": str(count)},
    )


def adopt_counters(client: redis.Redis, outbox: str, recorded: Mapping[int, int]) -> list[int]:
    """Give this outbox a counter for each partition it pushed to (``recorded``: partition -> messages recorded)
    that has none yet, from the shared counter of before (see the module docstring). Returns the partitions done."""
    pushed = {p: n for p, n in recorded.items() if n > 0}
    if not pushed or isinstance(client, redis.RedisCluster):
        return []  # a cluster never held the older counters (and they would be in other slots)
    adopt = client.register_script(ADOPT_SHARED_RELAY_COUNT)
    pipe = client.pipeline(transaction=False)
    for partition, count in pushed.items():
        queue = queue_name(partition)
        keys = [relay_pushed_key(outbox, queue), *legacy_relay_pushed_keys(outbox, queue)]
        adopt(keys=keys, args=[count], client=pipe)
    return [p for p, done in zip(pushed, pipe.execute(), strict=True) if int(done)]
