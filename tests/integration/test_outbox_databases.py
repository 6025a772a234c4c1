"""Several outbox databases on one broker (two applications, each with its own outbox, as the two examples' setups on
one Redis): each outbox has an id and its relays their own push counters, so neither takes the other's pushes for a
relay that died after pushing, and a loss is still seen, and sent again, by the outbox it hit. And the upgrade from
the shared counters of before: taken over without a resend storm, and without missing a loss."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, make_url, text

import seqproc
from seqproc.migrations import migrate_outbox
from seqproc.models.db import ensure_database, make_engine
from seqproc.models.settings import Settings
from seqproc.models.wire import article_key, legacy_relay_pushed_keys, partition_for, queue_name, relay_pushed_key
from seqproc.worker.relay import Relay
from tests.conftest import TEST_DATABASE_URL

pytestmark = pytest.mark.services

#: Every event of these tests is a like of this article: one partition, that both outboxes push onto.
ARTICLE = 31
#: What the relay logs when it takes another outbox's pushes for its own (the bug of shared counters).
FALSE_ALARMS = ("a relay died after pushing", "the broker lost")


def outbox_url(suffix: str) -> str:
    url = make_url(TEST_DATABASE_URL)
    return url.set(database=f"{url.database}_outbox_{suffix}").render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def outbox_urls(pg_url: str) -> list[str]:
    """Two applications' databases, each with the outbox tables (and its own outbox id), as `seqproc migrate` with
    each one's SEQPROC_OUTBOX_DATABASE_URL makes them."""
    urls = [outbox_url("a"), outbox_url("b")]
    for url in urls:
        ensure_database(url)
        migrate_outbox(url)
    return urls


@pytest.fixture
def outboxes(outbox_urls: list[str], clean: Settings) -> Iterator[list[Engine]]:
    engines = [make_engine(url) for url in outbox_urls]
    for engine in engines:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE seqproc_outbox, seqproc_outbox_relay"))
    yield engines
    for engine in engines:
        engine.dispose()


def relay_of(settings: Settings, url: str, outbox: Engine, ledger: Engine) -> Relay:
    """The relay of one application: its outbox, seqproc's ledger, the shared broker."""
    own = settings.model_copy(update={"outbox_database_url": url})
    return Relay(own, outbox, ledger, redis.Redis.from_url(settings.broker_url))


def write(outbox: Engine, users: range) -> list[str]:
    with outbox.begin() as conn:
        receipts = seqproc.outbox.send_many(
            conn, [{"type": "like", "article_id": ARTICLE, "user_id": u} for u in users]
        )
    return [r.event_id for r in receipts]


def false_alarms(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if any(alarm in r.getMessage() for alarm in FALSE_ALARMS)]


def test_two_outbox_databases_share_a_broker_and_each_sees_its_own_loss(
    clean: Settings, engine: Engine, outbox_urls: list[str], outboxes: list[Engine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="seqproc.worker.relay")
    relays = [relay_of(clean, url, outbox, engine) for url, outbox in zip(outbox_urls, outboxes, strict=True)]
    assert relays[0].outbox_id != relays[1].outbox_id
    client = redis.Redis.from_url(clean.broker_url)
    queue = queue_name(partition_for(article_key(ARTICLE), clean.partitions))
    written: list[list[str]] = [[], []]
    for step in range(4):  # the two relays push onto the same queue in turn
        for index, (outbox, relay) in enumerate(zip(outboxes, relays, strict=True)):
            written[index] += write(outbox, range(100 * index + 2 * step + 1, 100 * index + 2 * step + 3))
            result = relay.tick()
            assert (result.sent, result.messages, result.resent) == (2, 1, 0)
    assert false_alarms(caplog) == []
    assert client.llen(queue) == 8
    for relay in relays:
        assert int(client.get(relay_pushed_key(relay.outbox_id, queue))) == 4

    # The broker loses the last message, outbox a's: a's counter goes back by one, b's stays.
    client.lpop(queue)
    client.decr(relay_pushed_key(relays[0].outbox_id, queue))
    lost = relays[0].tick()
    assert (lost.resent, lost.sent, lost.messages) == (2, 2, 1)  # its last two events, again
    assert relays[1].tick().resent == 0
    # The broker loses everything: each outbox sends all of its own events (none applied yet) again, once.
    client.flushdb()
    assert [relay.tick().resent for relay in relays] == [8, 8]
    assert [relay.tick().resent for relay in relays] == [0, 0]
    sent = [event for message in client.lrange(queue, 0, -1) for event in _event_ids(message)]
    assert sorted(sent) == sorted(written[0] + written[1])
    assert [m for m in false_alarms(caplog) if "a relay died after pushing" in m] == []


def _event_ids(message: bytes) -> list[str]:
    import json

    return [event["id"] for event in json.loads(json.loads(message)["body"])[1]["events"]]


@pytest.mark.parametrize(("shared_minus_recorded", "resent"), [(0, 0), (5, 0), (-1, 2)])
def test_the_shared_counters_of_before_are_taken_over_without_a_resend_storm_or_a_missed_loss(
    clean: Settings,
    engine: Engine,
    outbox_urls: list[str],
    outboxes: list[Engine],
    caplog: pytest.LogCaptureFixture,
    shared_minus_recorded: int,
    resent: int,
) -> None:
    """As the previous version left a deployment: the outbox recorded 3 messages pushed, the broker counted them
    under the shared key: equal (0), or more (another outbox pushed onto the same queue: 5), or fewer (the broker
    lost the last message: -1). The upgraded relay takes the shared count over, capped at its record: it sends
    nothing again in the first two cases, and the lost message's events in the third."""
    caplog.set_level(logging.INFO, logger="seqproc.worker.relay")
    url, outbox = outbox_urls[0], outboxes[0]
    before = relay_of(clean, url, outbox, engine)
    for step in range(3):
        write(outbox, range(2 * step + 1, 2 * step + 3))
        assert before.tick().messages == 1
    client = redis.Redis.from_url(clean.broker_url)
    queue = queue_name(partition_for(article_key(ARTICLE), clean.partitions))
    client.rename(
        relay_pushed_key(before.outbox_id, queue), legacy_relay_pushed_keys(before.outbox_id, queue)[1]
    )  # the old key
    client.incrby(legacy_relay_pushed_keys(before.outbox_id, queue)[1], shared_minus_recorded)
    caplog.clear()

    upgraded = relay_of(clean, url, outbox, engine)
    assert int(client.get(relay_pushed_key(upgraded.outbox_id, queue))) == min(3, 3 + shared_minus_recorded)
    assert upgraded.tick().resent == resent
    write(outbox, range(50, 52))
    assert upgraded.tick().sent == 2
    assert int(client.get(relay_pushed_key(upgraded.outbox_id, queue))) == 4  # the lost message went again as one
    assert [m for m in false_alarms(caplog) if "a relay died after pushing" in m] == []
    assert len([m for m in false_alarms(caplog) if "the broker lost" in m]) == (1 if resent else 0)
    # Taken over once: the other outbox's relay, starting later, finds its own counter missing but nothing recorded.
    other = relay_of(clean, outbox_urls[1], outboxes[1], engine)
    assert client.get(relay_pushed_key(other.outbox_id, queue)) is None
