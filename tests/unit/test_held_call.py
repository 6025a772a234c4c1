"""A held connection's call (the producer's push) reads its reply off the socket: every way the exchange can end,
against a scripted socket."""

from __future__ import annotations

import pytest
import redis

from seqproc.models.resp import Held, ReplyLost
from seqproc.models.scripts import PUSH_AND_RING
from seqproc.producer.publish import pack_push


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

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """As redis-py's reply parser reads (each chunk whole: the tests give small ones)."""
        chunk = self.recv(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def settimeout(self, _seconds: float | None) -> None:
        pass

    def shutdown(self, _how: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def held_on(sock: Socket) -> Held:
    """A held connection whose socket is ``sock`` (connected already: nothing else is dialled)."""
    held = Held(redis.Redis(protocol=2, health_check_interval=0))
    connection = held.connection()
    connection._sock = sock
    connection._parser.on_connect(connection)  # what connect() does: its reply parser reads this socket
    return held


COMMAND = pack_push([b"seqproc.p03", b"seqproc.bell.seqproc.p03"], [b"1", b'{"body": "x"}'])


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
    held = held_on(sock)
    assert held.call(COMMAND) == 1
    assert sock.sent == COMMAND
    assert held.connection()._sock is sock  # kept for the next call


def test_an_unknown_script_is_loaded_and_the_command_sent_again() -> None:
    """NOSCRIPT (a restarted Redis): the script is loaded on the same connection, then the command goes again."""
    sock = Socket(b"-NOSCRIPT No matching script. Please use EVAL.\r\n", b"$40\r\n" + b"0" * 40 + b"\r\n", b":1\r\n")
    held = held_on(sock)
    assert held.call(COMMAND, script=PUSH_AND_RING) == 1
    load = b"".join(redis.Connection(protocol=2).pack_command("SCRIPT", "LOAD", PUSH_AND_RING))
    assert sock.sent == COMMAND + load + COMMAND


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
        held_on(Socket(reply)).call(COMMAND)


def test_a_demoted_master_is_left_for_the_one_the_sentinels_name() -> None:
    """READONLY: a failover made this server a replica and it refused the push (not sent): a connection error, so
    that the call tries again, and the connection closed, so that it opens again on the new master."""
    sock = Socket(b"-READONLY You can't write against a read only replica.\r\n")
    with pytest.raises(redis.ConnectionError, match="replica"):
        held_on(sock).call(COMMAND)
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
    held = held_on(sock)
    with pytest.raises((KeyboardInterrupt, redis.ConnectionError, TimeoutError)):
        held.call(COMMAND)
    assert sock.closed
    assert held.connection()._sock is None


def test_a_reply_that_is_not_one_line_closes_the_connection() -> None:
    sock = Socket(b">3\r\n$10\r\ninvalidate\r\n*0\r\n:1\r\n")  # a RESP3 push frame: never on a RESP2 connection
    held = held_on(sock)
    with pytest.raises(redis.ConnectionError, match="unexpected reply"):
        held.call(COMMAND)
    assert held.connection()._sock is None


@pytest.mark.parametrize(
    ("chunks", "may_have_run"),
    [
        ([TimeoutError("timed out")], True),  # a busy or paused server may read and run it later
        ([b":1"], True),  # a reply begun: it ran
        ([b""], False),  # closed before any reply: it never took it
        ([ConnectionResetError("reset")], False),
    ],
    ids=["timeout", "cut-mid-reply", "closed", "reset"],
)
def test_a_lost_reply_says_whether_the_server_may_have_run_the_command(
    chunks: list[bytes | BaseException], may_have_run: bool
) -> None:
    """The producer tells "maybe sent" from "NOT sent" by this (a refused send gives its sequence numbers back)."""
    with pytest.raises((redis.ConnectionError, OSError)) as caught:
        held_on(Socket(*chunks)).call(COMMAND)
    assert isinstance(caught.value, ReplyLost) is may_have_run
