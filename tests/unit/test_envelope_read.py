"""The worker's fast read of a message a producer or the relay wrote (``read_own``) gives exactly what decoding the
whole message gives, and gives up (None: the worker decodes it whole) on anything else."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from seqproc.models.envelope import envelope_of_json, read_own, task_envelope
from seqproc.models.transport import fetched
from seqproc.producer.build import build_event

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=32)
# Event arrays as the relay joins them: any JSON text (the relay's rows were validated when written; here anything).
payloads = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(ids, st.integers(min_value=0, max_value=255), st.lists(payloads, max_size=5))
def test_read_own_reads_what_a_whole_decode_reads(task_id: str, partition: int, events: list[object]) -> None:
    queue = f"seqproc.p{partition:02d}"
    text = envelope_of_json(queue, partition, json.dumps(events), len(events), task_id=task_id)
    whole = json.loads(text)
    assert read_own(text) == (whole["body"], whole["headers"]["id"], whole["properties"]["delivery_tag"])
    assert whole["headers"]["task"] == "seqproc.apply"


def test_a_producer_message_is_read_fast_and_the_same() -> None:
    text = task_envelope("seqproc.p01", 1, [build_event("like", {"article_id": 7, "user_id": 8})], task_id="t1")
    message = fetched("seqproc.p01", text.encode())
    whole = json.loads(text)
    assert (message.body, message.delivery_tag, message.headers["id"], message.content_type) == (
        whole["body"],
        whole["properties"]["delivery_tag"],
        "t1",
        "application/json",
    )


def test_anything_else_is_left_to_the_whole_decode() -> None:
    text = task_envelope("seqproc.p01", 1, [build_event("like", {"article_id": 7, "user_id": 8})], task_id="t1")
    whole = json.loads(text)
    assert read_own(json.dumps(whole, indent=1)) is None  # another writer's spacing
    whole["headers"]["task"] = "other.task"
    assert read_own(json.dumps(whole)) is None  # another task: the consumer dead-letters it
    whole["headers"]["task"] = "seqproc.apply"
    whole["properties"]["body_encoding"] = "base64"
    assert read_own(json.dumps(whole)) is None
    whole["properties"]["body_encoding"] = None
    whole["body"] = 5
    assert read_own(json.dumps(whole)) is None  # a body that is not text
    assert read_own(text[:-1]) is None  # cut short
    assert read_own(text.replace('"delivery_tag": "', '"delivery_tag": "a\\\\', 1)) is None
    two_tags = text.replace('"reply_to": ""', '"reply_to": "", "delivery_tag": "x"')
    assert read_own(two_tags) is None  # the fetch script would find the first tag: leave it to the whole decode
