"""The producer's push reads its reply off the socket: every way the exchange can end, against a scripted socket."""

from __future__ import annotations

import pytest
import redis

from seqproc.producer.publish import pack_push, push_on


class Socket:
    """Replies from a script, in the chunks given; records what was sent and whether it was closed."""

    def __init__(self, *chunks: bytes | BaseException) -> None:
        self.chunks = list(chunks)
        self.sent = b""
        self.closed = False

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, _size: int) -> bytes:
        chunk = self.chunks.pop(0) if self.chunks else b""
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk

    def shutdown(self, _how: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def connection(sock: Socket) -> redis.Connection:
    conn = redis.Connection(protocol=2, health_check_interval=0)
    conn._sock = sock  # type: ignore[assignment]
    return conn


COMMAND = pack_push(["seqproc.p03", "seqproc.bell.seqproc.p03"], ["1", '{"body": "x"}'])


def test_the_command_is_what_redis_py_packs() -> None:
    packed = b"".join(
        redis.Connection(protocol=2).pack_command(
            "EVALSHA",
            COMMAND.split(b"\r\n")[4].decode(),
            2,
            "seqproc.p03",
            "seqproc.bell.seqproc.p03",
            1,
            '{"body": "x"}',
        )
    )
    assert packed == COMMAND


@pytest.mark.parametrize("chunks", [[b":1\r\n"], [b":", b"1", b"\r", b"\n"]], ids=["whole", "split"])
def test_an_integer_reply_is_success_however_it_arrives(chunks: list[bytes]) -> None:
    sock = Socket(*chunks)
    conn = connection(sock)
    push_on(conn, COMMAND)
    assert sock.sent == COMMAND
    assert conn._sock is sock  # kept for the next call


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"-NOSCRIPT No matching script. Please use EVAL.\r\n", redis.exceptions.NoScriptError),
        (b"-LOADING Redis is loading the dataset in memory\r\n", redis.exceptions.BusyLoadingError),
        (b"-ERR Error running script: WRONGTYPE\r\n", redis.exceptions.ResponseError),
    ],
)
def test_an_error_reply_is_raised_as_redis_py_raises_it(reply: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        push_on(connection(Socket(reply)), COMMAND)


def test_a_demoted_master_is_left_for_the_one_the_sentinels_name() -> None:
    """READONLY: a failover made this server a replica and it refused the push (not sent): a connection error, so
    that the call tries again, and the connection closed, so that it opens again on the new master."""
    sock = Socket(b"-READONLY You can't write against a read only replica.\r\n")
    with pytest.raises(redis.ConnectionError, match="replica"):
        push_on(connection(sock), COMMAND)
    assert sock.closed


@pytest.mark.parametrize(
    "chunks",
    [
        [KeyboardInterrupt()],  # interrupted while waiting for the reply (it stays unread on the socket)
        [b":", KeyboardInterrupt()],  # ... half read
        [b":1"],  # the server closed the connection mid-reply
        [TimeoutError("timed out")],
    ],
    ids=["interrupted", "interrupted-half-read", "closed-mid-reply", "timeout"],
)
def test_an_exchange_that_stops_half_way_closes_the_connection(chunks: list[bytes | BaseException]) -> None:
    """A reply left unread would be taken by the next call as its own: the connection must not be reused."""
    sock = Socket(*chunks)
    conn = connection(sock)
    with pytest.raises((KeyboardInterrupt, redis.ConnectionError, TimeoutError)):
        push_on(conn, COMMAND)
    assert sock.closed
    assert conn._sock is None


def test_a_reply_that_is_not_one_line_closes_the_connection() -> None:
    sock = Socket(b">3\r\n$10\r\ninvalidate\r\n*0\r\n:1\r\n")  # a RESP3 push frame: never on a RESP2 connection
    conn = connection(sock)
    with pytest.raises(redis.ConnectionError, match="unexpected reply"):
        push_on(conn, COMMAND)
    assert conn._sock is None
