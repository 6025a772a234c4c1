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
