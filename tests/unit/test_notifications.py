"""Notifications in the embedded mode (memory result backend): the same cursors, caps and once-only telling as the
Redis streams (``tests/integration/test_notifications.py``)."""

from __future__ import annotations

from seqproc.models.notifications import MemoryNotifications, Notice, Notices, Notification


def notice(n: int, topic: str = "user:1") -> Notice:
    return Notice(topic, f"like:k{n}", Notification("", f"k{n}", "like", "article:1", "applied", None))


def test_cursor_cap_and_once() -> None:
    topics = MemoryNotifications()
    topics.publish(Notices([notice(n) for n in range(5)], ttl_s=60, max=3))
    kept = topics.read("user:1", None, timeout_s=0)
    assert [n.idempotency_key for n in kept] == ["k2", "k3", "k4"]  # the cap drops the oldest
    assert topics.read("user:1", kept[0].cursor, timeout_s=0) == kept[1:]
    topics.publish(Notices([notice(4), notice(5)], ttl_s=60, max=3))  # k4 told already
    assert [n.idempotency_key for n in topics.read("user:1", kept[-1].cursor, timeout_s=0)] == ["k5"]
    assert topics.read("user:2", None, timeout_s=0.01) == []


def test_the_public_calls_read_the_memory_store_of_the_embedded_mode() -> None:
    """``seqproc.notifications`` and ``seqproc.aio.notifications`` on a ``memory://`` result backend: what the
    in-process worker publishes there (``put_many``, as after its commit)."""
    import asyncio

    import seqproc
    import seqproc.aio
    from seqproc import producer
    from seqproc.models.outcomes import outcome_store
    from seqproc.models.settings import Settings

    settings = Settings(broker_url="memory://localhost/", result_backend="memory://", partitions=4)
    producer.configure(settings)
    try:
        outcome_store("memory://", ttl_s=60).put_many([], Notices([notice(n, "user:77") for n in range(3)]))
        first = seqproc.notifications("user:77", timeout_s=0)
        assert [n.idempotency_key for n in first] == ["k0", "k1", "k2"]
        assert seqproc.notifications("user:77", after=first[-1].cursor, timeout_s=0.05) == []

        async def stream() -> list[str]:
            found = []
            async for note in seqproc.aio.notifications("user:77", after=first[0].cursor):
                found.append(note.idempotency_key)
                if len(found) == 2:
                    break
            return found

        assert asyncio.run(asyncio.wait_for(stream(), 10)) == ["k1", "k2"]
    finally:
        producer.configure(None)
