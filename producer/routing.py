"""Which partition, hence which queue, an entity's events go to.

The mapping must never change by accident (a test pins it): a key that moved partition would have two writers.
"""

from __future__ import annotations

import zlib

QUEUE_PREFIX = "seqproc.p"


def partition_for(entity_key: str, partitions: int) -> int:
    """``crc32(entity_key) % partitions``: stable across processes, hosts and Python versions (unlike ``hash``)."""
    return zlib.crc32(entity_key.encode("utf-8")) % partitions


def queue_name(partition: int) -> str:
    """``seqproc.p00``, ``seqproc.p01``, ...; the routing key is the same string."""
    return f"{QUEUE_PREFIX}{partition:02d}"


def partition_of_queue(name: str) -> int | None:
    """The partition a queue name stands for, or None if it is not a partition queue."""
    if not name.startswith(QUEUE_PREFIX):
        return None
    digits = name[len(QUEUE_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def article_key(article_id: int) -> str:
    return f"article:{article_id}"


def product_key(product_id: int) -> str:
    return f"product:{product_id}"
