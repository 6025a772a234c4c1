"""The Redis transport seqproc uses: kombu's, with one change.

kombu 5.7's Redis channel builds a new ``redis.Redis`` client object on every ``conn_or_acquire()``: for each
delivery (``QoS.append``), each ack and each event publish, about 100 microseconds apiece and ~17% of a busy
worker (see PERFORMANCE-NOTES; redis-py issue 3624). A client object holds no connection of its own (it borrows
them from the channel's pool per command, and checks the pid after a fork), so one per channel is enough.
Selected by ``broker_transport`` in ``celeryconfig`` for ``redis://`` URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        if self._shared_client is None:
            self._shared_client = self._create_client()  # type: ignore[attr-defined]  # kombu has it; stubs lack it
        yield self._shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel


#: What ``broker_transport`` names.
TRANSPORT = "models.broker:Transport"
