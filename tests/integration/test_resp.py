"""Commands packed by hand (``models/resp.py``): the same bytes redis-py would send, run on a held connection that
survives what a connection meets in production (a script cache flushed by a restart, a connection killed)."""

from __future__ import annotations

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from seqproc.models.resp import Held, command, pack, pack_texts
from seqproc.models.scripts import PUSH_AND_RING, PUSH_AND_RING_SHA

_SERIALIZER = PythonRespSerializer(6000, Encoder("utf-8", "strict", decode_responses=False).encode)

text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(st.lists(st.one_of(text, st.integers(min_value=0, max_value=10**12)), max_size=8))
def test_pack_writes_what_redis_py_writes(rest: list[str | int]) -> None:
    args = ["EVALSHA", *rest]  # redis-py splits a first argument with spaces in it (a command name)
    assert pack(*args) == b"".join(_SERIALIZER.pack(*args))
    assert command(len(args), pack_texts(args[:1]), pack_texts(args[1:])) == pack(*args)


def test_a_held_connection_reloads_a_flushed_script_and_reconnects_after_a_kill(redis_base: str) -> None:
    client = redis.Redis.from_url(redis_base)
    client.delete("resp-test-q", "resp-test-bell")
    held = Held(client)
    push = command(
        6, pack_texts(["EVALSHA", PUSH_AND_RING_SHA, 2, "resp-test-q", "resp-test-bell"]), pack_texts(["m1"])
    )
    client.script_flush()  # a restarted Redis knows no script
    assert held.run(push, script=PUSH_AND_RING) == [1]
    (name,) = held.run(pack("CLIENT", "ID"))
    client.client_kill_filter(_id=name)  # the server closes the held connection between two calls
    # Whether the server ran a command whose reply never came is unknown: the call says so instead of sending it
    # again (a fetch run twice would hold messages nobody delivers), and the next call connects again.
    with pytest.raises(redis.ConnectionError):
        held.run(push, script=PUSH_AND_RING)
    assert held.run(push, script=PUSH_AND_RING) == [1]
    assert held.run(pack("HSET", "resp-test-h", "a", "1") + pack("HDEL", "resp-test-h", "a"), 2) == [1, 1]
    assert client.lrange("resp-test-q", 0, -1) == [b"m1", b"m1"]  # the failed call did not push
    held.close()
    client.delete("resp-test-q", "resp-test-bell", "resp-test-h")
