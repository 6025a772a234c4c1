"""Every Lua script seqproc runs in Redis, in one place, each named for what it does.

Keys and prefixes are in :mod:`seqproc.models.wire`; the Celery envelope the messages travel in is in
:mod:`seqproc.models.envelope`. A script is sent by its SHA-1 (``EVALSHA``) and loaded on ``NOSCRIPT``; the names
below are the contract between the modules that run them (the transport, the producers, the relay, leases, outcomes,
``seqproc status``).
"""

from __future__ import annotations

import hashlib


def sha1(script: str) -> str:
    """The name Redis gives ``script`` (``EVALSHA``, ``SCRIPT LOAD``)."""
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


#: Per queue, five KEYS in a row (:data:`FETCH_KEYS_PER_QUEUE`): the queue, its bell, its fence (lease), its unacked
#: hash and its unacked index, all in the queue's slot (:mod:`seqproc.models.wire`): on a cluster, one call per queue.
#: ARGV: now, most messages to take, number of queues, the fence owner token ('' = take from every queue).
#: Returns queue1, item1, queue2, item2, ..., then one more element ('+') if it stopped at the limit with messages
#: left in its queues.
FETCH_AND_HOLD = """
local now, limit, nqueues, owner = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out = {}
local taken = 0
local function ours(i)
    return owner == '' or redis.call('GET', KEYS[5 * i - 2]) == owner
end
for i = 1, nqueues do
    local queue, unacked, index = KEYS[5 * i - 4], KEYS[5 * i - 1], KEYS[5 * i]
    local held_tail = ',"",' .. cjson.encode(queue) .. ']'
    -- Fenced: a queue whose fence is not ours (any more) gives nothing, whatever the caller believed.
    local mine = ours(i)
    local waiting, want = 0, 0
    if mine and taken < limit then
        -- One LLEN, then one RPOP of all it takes: the queue is not touched once this may have emptied it. (On a
        -- Redis Cluster slot being migrated, a key gone from the node fails every later command on it, "non local
        -- key", after the moves before it were done: the messages taken would be held, delivered to nobody.)
        waiting = redis.call('LLEN', queue)
        want = math.min(waiting, limit - taken)
    end
    if want > 0 then
        for _, item in ipairs(redis.call('RPOP', queue, want)) do
            -- The delivery tag, where seqproc's writers put it: last in the text (a quote inside a JSON string is
            -- escaped, so no value can fake it). Looked for in the last 160 bytes only: Lua tries an unanchored
            -- pattern at every position (~4 us of Redis CPU per 1 KB message); a longer tag falls to the decode.
            local tag = string.match(item, '"delivery_tag": "([^"\\\\]+)"}}$', -160)
            if not tag then
                local ok, msg = pcall(cjson.decode, item)
                if ok and type(msg) == 'table' and type(msg.properties) == 'table'
                        and type(msg.properties.delivery_tag) == 'string' then
                    tag = msg.properties.delivery_tag
                end
            end
            if tag then
                redis.call('HSET', unacked, tag, '[' .. item .. held_tail)
                -- One microsecond apart: a restore sorts by this score, so it must keep the fetch order.
                redis.call('ZADD', index, string.format('%.6f', now + taken / 1000000), tag)
            end
            out[#out + 1] = queue
            out[#out + 1] = item
            taken = taken + 1
        end
    end
    if mine and taken >= limit then
        -- More may be waiting, here or in a later queue (of ours) whose bell the wait that led here consumed: ring
        -- once, so that the next wait returns at once.
        for j = i, nqueues do
            local left = waiting - want
            if j > i then
                left = ours(j) and redis.call('LLEN', KEYS[5 * j - 4]) or 0
            end
            if left > 0 then
                local bell = KEYS[5 * j - 3]
                redis.call('LPUSH', bell, '1')
                redis.call('LTRIM', bell, 0, 0)
                out[#out + 1] = '+'
                break
            end
        end
        break
    end
end
return out
"""
#: How many KEYS :data:`FETCH_AND_HOLD` takes per queue.
FETCH_KEYS_PER_QUEUE = 5

#: A chunk consumer's give-back of one queue's messages: KEYS the queue, its bell, its unacked hash and index. ARGV:
#: how many, the messages oldest first, then their delivery tags. Puts them back at the head of the queue, in order
#: (the oldest next in line), forgets them, and rings the bell, in one step. Returns how many.
GIVE_BACK = """
local n = tonumber(ARGV[1])
for i = n + 1, 2, -1 do
    redis.call('RPUSH', KEYS[1], ARGV[i])
end
-- Forgotten in one command per key: a key emptied is not touched again (on a Redis Cluster slot being migrated, a key
-- gone from the node fails every later command on it, "non local key", after the writes before it were done).
local tags = {}
for i = n + 2, 2 * n + 1 do
    tags[#tags + 1] = ARGV[i]
end
if n > 0 then
    redis.call('HDEL', KEYS[3], unpack(tags))
    redis.call('ZREM', KEYS[4], unpack(tags))
end
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 0)
return n
"""

#: Restore held messages of one queue, each once, in one step: KEYS the queue, its bell, its unacked hash and index;
#: ARGV 1 to push them at the consuming end (next in line) else 0, how many (n), their n delivery tags oldest first,
#: then the n messages to push (the held ones, marked redelivered by the caller; '' for a tag no longer held). Each
#: message is pushed only if this call is the one that removed its tag from the hash (a restore racing another, or an
#: ack, pushes nothing); the oldest ends up first in line of them. Rings the bell if it pushed. Returns how many.
RESTORE_HELD = """
local n = tonumber(ARGV[2])
local consuming = ARGV[1] == '1'
local pushed = 0
if n == 0 then return 0 end
-- Which tags are still held, read first; the hash and the index are then emptied in one command each, last: a key
-- emptied is not touched again (on a Redis Cluster slot being migrated, a key gone from the node fails every later
-- command on it, "non local key", after the writes before it were done).
local tags = {}
for i = 1, n do
    tags[i] = ARGV[2 + i]
end
local held = redis.call('HMGET', KEYS[3], unpack(tags))
-- At the consuming end the newest goes first, so that the oldest is next; at the other end the oldest goes first.
local first, last, step = 1, n, 1
if consuming then first, last, step = n, 1, -1 end
local seen = {}
for i = first, last, step do
    if held[i] and not seen[tags[i]] then  -- a tag named twice is one message: pushed once
        seen[tags[i]] = true
        redis.call(consuming and 'RPUSH' or 'LPUSH', KEYS[1], ARGV[2 + n + i])
        pushed = pushed + 1
    end
end
redis.call('ZREM', KEYS[4], unpack(tags))
redis.call('HDEL', KEYS[3], unpack(tags))
if pushed > 0 then
    redis.call('LPUSH', KEYS[2], '1')
    redis.call('LTRIM', KEYS[2], 0, 0)
end
return pushed
"""
#: Most messages one :data:`RESTORE_HELD` call restores: Redis runs nothing else meanwhile (about 5 ms per 1,000).
RESTORE_CHUNK = 1000

#: Held by both push scripts below, at their end: each pushed event's entry in the pending index of its entity key
#: (``seqproc:pending:<key>``, a hash: event id -> order + event JSON), for ``seqproc.preview`` to read in one
#: command whatever the queue's depth. The order is the server's clock (TIME, microseconds) and the entry's rank in
#: the push, so that a key's entries sort as they were pushed. KEYS[first ..]: the indexes; ARGV[a]: their time to
#: live, then per index: how many entries, then (event id, event JSON) for each. Costs one HSET per event and one
#: EXPIRE per key; the worker's ack deletes the entries (``Channel.ack_fetched``).
_HOLD_PENDING = """
local function hold_pending(first, a)
    if first > #KEYS then return end
    local ttl = ARGV[a]
    a = a + 1
    local now = redis.call('TIME')
    local order = string.format('%010d%06d', now[1], now[2])
    local rank = 0
    for k = first, #KEYS do
        local count = tonumber(ARGV[a])
        a = a + 1
        for _ = 1, count do
            rank = rank + 1
            redis.call('HSET', KEYS[k], ARGV[a], order .. string.format('%06d', rank) .. ARGV[a + 1])
            a = a + 2
        end
        redis.call('EXPIRE', KEYS[k], ttl)
    end
end
"""

#: The producer's push of a send: KEYS queue1, bell1, queue2, bell2, ..., then the pending indexes; ARGV how many
#: messages, message1, message2, ..., then the pending entries (see ``_HOLD_PENDING``). Each message is pushed
#: (LPUSH, as kombu does) and its queue's bell rung unless it rings already (one token at most: under a stream of
#: sends the worker fetches on its batch's timer and leaves the bell rung, so most pushes only look); one command,
#: one reply, for the lot.
PUSH_AND_RING = (
    _HOLD_PENDING
    + """
local n = tonumber(ARGV[1])
for i = 1, n do
    redis.call('LPUSH', KEYS[2 * i - 1], ARGV[i + 1])
    if redis.call('LLEN', KEYS[2 * i]) == 0 then
        redis.call('LPUSH', KEYS[2 * i], '1')
    end
end
hold_pending(2 * n + 1, n + 2)
return n
"""
)

#: KEYS: the queue's push count, the queue, its bell, then the pending indexes. ARGV: the count the relay recorded,
#: how many messages, the messages, oldest first, then the pending entries (see ``_HOLD_PENDING``). Pushes them and
#: raises the count only if the count is the recorded one. Returns {1, new count} or {0, count found}.
RELAY_PUSH_IF_COUNT = (
    _HOLD_PENDING
    + """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count ~= tonumber(ARGV[1]) then
    return {0, count}
end
local n = tonumber(ARGV[2])
for i = 3, n + 2 do
    redis.call('LPUSH', KEYS[2], ARGV[i])
end
count = count + n
redis.call('SET', KEYS[1], count)
redis.call('LPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], 0, 0)
hold_pending(4, n + 3)
return {1, count}
"""
)

#: Upgrading from kombu's one ``unacked`` hash for every queue: KEYS that hash, its index, the queue the message goes
#: back to, its bell; ARGV the delivery tag. Moves the message back to the consuming end of the queue (next in line)
#: if this call is the one that removed it from the hash. Returns 1 if it moved it. Single Redis only (that hash
#: predates the cluster layout).
RESTORE_LEGACY_HELD = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not raw or redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
    return 0
end
local held = cjson.decode(raw)
redis.call('RPUSH', KEYS[3], cjson.encode(held[1]))
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return 1
"""

#: KEYS: the outbox's counter of a queue, then the counters it had before (``legacy_relay_pushed_keys``: the
#: outbox's own outside the queue's slot, then the one every outbox shared). ARGV: the count this outbox recorded.
#: Sets the outbox's counter, if it has none, to the first older counter's value found, capped at the record.
#: Returns 1 if it set it. Single Redis only: the older keys are in other slots (a cluster has none of them).
ADOPT_SHARED_RELAY_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
for i = 2, #KEYS do
    local older = redis.call('GET', KEYS[i])
    if older then
        redis.call('SET', KEYS[1], math.min(tonumber(older), tonumber(ARGV[1])))
        return 1
    end
end
return 0
"""

#: Renew the lease only while we still hold it: KEYS[1] lease, ARGV[1] token, ARGV[2] time limit (ms).
RENEW_OWN_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: Release only our own lease.
RELEASE_OWN_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

#: For each key: replace the list by one element (a redelivered event's later report, "duplicate", replaces the
#: earlier one instead of queueing behind it) and set its expiry. ARGV: the time to live, how many of the first keys
#: have a value of their own, the value of the other keys, then those own values in key order.
PUT_OUTCOMES = """
local ttl, own, shared = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for i, key in ipairs(KEYS) do
    redis.call('DEL', key)
    if i <= own then
        redis.call('RPUSH', key, ARGV[i + 3])
    else
        redis.call('RPUSH', key, shared)
    end
    redis.call('EXPIRE', key, ttl)
end
return #KEYS
"""

#: KEYS: per notice, its topic's stream and its set of keys told. ARGV: the time to live, the cap, then per notice
#: its ``once``, idempotency key, type, entity key, status and reason ('' for none). Returns how many it appended.
PUBLISH_NOTIFICATIONS = """
local ttl, cap = ARGV[1], ARGV[2]
local appended = 0
for i = 1, #KEYS / 2 do
    local stream, told = KEYS[2 * i - 1], KEYS[2 * i]
    local a = 2 + (i - 1) * 6
    if redis.call('SADD', told, ARGV[a + 1]) == 1 then
        redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', 'idempotency_key', ARGV[a + 2], 'type', ARGV[a + 3],
            'key', ARGV[a + 4], 'status', ARGV[a + 5], 'reason', ARGV[a + 6])
        appended = appended + 1
    end
    redis.call('EXPIRE', stream, ttl)
    redis.call('EXPIRE', told, ttl)
end
return appended
"""

PUSH_AND_RING_SHA = sha1(PUSH_AND_RING)
FETCH_AND_HOLD_SHA = sha1(FETCH_AND_HOLD)
PUT_OUTCOMES_SHA = sha1(PUT_OUTCOMES)
