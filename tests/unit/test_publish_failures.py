"""A producer facing a broker it cannot use fails within a bound that suits a web request, says so in one log line
at most, and tells the truth about the event: not sent, or (the broker went silent after the push) maybe sent.

No services: the "brokers" are a closed port (nothing listens: the connection is refused), a socket that accepts
and never answers, and a socket that answers PING but never the push.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import seqproc
import seqproc.aio
from seqproc.models.errors import ConfigError
from seqproc.models.settings import Settings
from seqproc.worker.cli import RET_TIMEOUT, RET_UNAVAILABLE, exit_code
from tests.conftest import free_port

SECRET = "s3cr3t-pw"


def settings_for(port: int, **update: float) -> Settings:
    # The default publish timeout (10 s): what a refused connection must not wait for.
    return Settings(broker_url=f"redis://:{SECRET}@127.0.0.1:{port}/0", result_backend="memory://", **update)


@pytest.fixture
def configure() -> Iterator[object]:
    yield seqproc.configure
    seqproc.configure(None)


class Silent:
    """A TCP server that accepts connections and reads what comes; it answers nothing, or (``pong=True``) everything
    but the push: AUTH and PING, the handshake, the partition count's GET (none published) and the health check."""

    def __init__(self, *, pong: bool) -> None:
        self.pong = pong
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received += data
            if self.pong:  # one reply per command (redis-py pipelines its handshake), none to the push
                for command in (b"\r\n" + data).split(b"\r\n*")[1:]:
                    if b"EVALSHA" in command:
                        continue
                    if b"PING" in command:
                        connection.sendall(b"+PONG\r\n")
                    elif b"GET" in command:  # the partition count a connection reads as it opens: none published
                        connection.sendall(b"$-1\r\n")
                    else:
                        connection.sendall(b"+OK\r\n")

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def lines_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.INFO]


def test_a_refused_connection_fails_within_about_a_second_in_one_log_line(
    configure: object, caplog: pytest.LogCaptureFixture
) -> None:
    closed = free_port()
    seqproc.configure(settings_for(closed))
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(seqproc.PublishError) as caught:
        seqproc.like(1, 2)
    elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 2.5  # SEQPROC_PUBLISH_REFUSED_RETRY_S (1 s), not SEQPROC_PUBLISH_TIMEOUT_S (10 s)
    message = str(caught.value)
    assert f"SEQPROC_BROKER_URL=redis://:***@127.0.0.1:{closed}/0" in message
    assert message.endswith("they were NOT sent")
    assert SECRET not in message
    assert (caught.value.setting, caught.value.maybe_sent) == ("SEQPROC_BROKER_URL", False)
    assert exit_code(caught.value) == RET_UNAVAILABLE
    assert len(lines_logged(caplog)) <= 1, lines_logged(caplog)  # was one per retry: 14


def test_connect_to_a_refused_port_fails_fast_too(configure: object) -> None:
    seqproc.configure(settings_for(free_port()))
    started = time.monotonic()
    with pytest.raises(seqproc.PublishError, match="could not connect to the broker at SEQPROC_BROKER_URL="):
        seqproc.connect()
    assert time.monotonic() - started < 2.5


def test_a_call_timeout_bounds_a_broker_that_never_answers(configure: object) -> None:
    """Connected, but no reply ever comes (a hung server): the call's timeout_s bounds the socket's waits, which
    would otherwise last the transport's socket timeout."""
    server = Silent(pong=False)
    try:
        seqproc.configure(settings_for(server.port))
        started = time.monotonic()
        with pytest.raises(seqproc.PublishError, match="to the broker at SEQPROC_BROKER_URL="):
            seqproc.like(1, 2, timeout_s=0.5)
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(seqproc.PublishError):
            seqproc.connect(timeout_s=0.5)  # the connection opens; a PING (its health check) gets no answer
        assert time.monotonic() - started < 2.0
    finally:
        server.close()


def test_a_push_written_but_never_answered_may_have_been_sent(configure: object) -> None:
    """The broker took the push and went silent: it may hold the event. The error says so (resend only with the
    same key) instead of "NOT sent", and the command line's code is "sent, outcome unknown"."""
    server = Silent(pong=True)
    try:
        seqproc.configure(settings_for(server.port, publish_timeout_s=0.6))
        with pytest.raises(seqproc.PublishError) as caught:
            seqproc.like(1, 2)
        assert b"EVALSHA" in server.received
        assert caught.value.maybe_sent
        assert "they may have been sent: send them again only with the same idempotency keys" in str(caught.value)
        assert exit_code(caught.value) == RET_TIMEOUT
    finally:
        server.close()


def test_asyncio_calls_fail_fast_and_take_a_timeout(configure: object) -> None:
    seqproc.configure(settings_for(free_port()))

    async def refused() -> float:
        started = time.monotonic()
        with pytest.raises(seqproc.PublishError, match="they were NOT sent"):
            await seqproc.aio.like(1, 2)
        await seqproc.aio.aclose()
        return time.monotonic() - started

    assert asyncio.run(refused()) < 2.5
    server = Silent(pong=False)
    try:
        seqproc.configure(settings_for(server.port))

        async def silent() -> float:
            started = time.monotonic()
            with pytest.raises(seqproc.PublishError):
                await seqproc.aio.send_many([{"type": "like", "article_id": 1, "user_id": 2}], timeout_s=0.5)
            await seqproc.aio.aclose()
            return time.monotonic() - started

        assert asyncio.run(silent()) < 2.0
    finally:
        server.close()


def test_a_timeout_must_be_positive(configure: object) -> None:
    seqproc.configure(settings_for(free_port()))
    with pytest.raises(ConfigError, match="timeout_s: must be > 0 seconds"):
        seqproc.restock(1, 5, timeout_s=0)
