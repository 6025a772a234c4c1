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


#: KEYS: unacked hash, unacked index, then the queues, then their bells, then their leases (same order).
#: ARGV: now, most messages to take, number of queues, the fence owner token ('' = take from every queue).
#: Returns queue1, item1, queue2, item2, ..., then one more element ('+') if it stopped at the limit with messages
#: left in its queues.
FETCH_AND_HOLD = """
local unacked, index = KEYS[1], KEYS[2]
local now, limit, nqueues, owner = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out = {}
local taken = 0
for i = 1, nqueues do
    local queue = KEYS[2 + i]
    -- Fenced: a queue whose fence is not ours (any more) gives nothing, whatever the caller believed.
    local ours = owner == '' or redis.call('GET', KEYS[2 + 2 * nqueues + i]) == owner
    while ours and taken < limit do
        local item = redis.call('RPOP', queue)
        if not item then break end
        -- The delivery tag, found without decoding the whole message where seqproc's writers put it, last in the
        -- text ("delivery_tag": "..."}}: the worker's fast read takes it from there too; a quote inside a JSON
        -- string is escaped, so no string value can fake it); a message written otherwise is decoded. Recorded as
        -- kombu's QoS.append would: [message, exchange, routing_key], the message as it was sent, to go back to
        -- this queue (default exchange).
        local tag = string.match(item, '"delivery_tag": "([^"\\\\]+)"}}$')
        if not tag then
            local ok, msg = pcall(cjson.decode, item)
            if ok and type(msg) == 'table' and type(msg.properties) == 'table'
                    and type(msg.properties.delivery_tag) == 'string' then
                tag = msg.properties.delivery_tag
            end
        end
        if tag then
            redis.call('HSET', unacked, tag, '[' .. item .. ',"",' .. cjson.encode(queue) .. ']')
            -- One microsecond apart: a restore sorts by this score, so it must keep the fetch order.
            redis.call('ZADD', index, string.format('%.6f', now + taken / 1000000), tag)
        end
        out[#out + 1] = queue
        out[#out + 1] = item
        taken = taken + 1
    end
    if ours and taken >= limit then
        -- More may be waiting, here or in a later queue (of ours) whose bell the wait that led here consumed: ring
        -- once, so that the next wait returns at once.
        for j = i, nqueues do
            if (owner == '' or redis.call('GET', KEYS[2 + 2 * nqueues + j]) == owner)
                    and redis.call('LLEN', KEYS[2 + j]) > 0 then
                local bell = KEYS[2 + nqueues + j]
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
#: (LPUSH, as kombu does) and its queue's bell rung, kept to one token; one command, one reply, for the lot.
PUSH_AND_RING = (
    _HOLD_PENDING
    + """
local n = tonumber(ARGV[1])
for i = 1, n do
    redis.call('LPUSH', KEYS[2 * i - 1], ARGV[i + 1])
    redis.call('LPUSH', KEYS[2 * i], '1')
    redis.call('LTRIM', KEYS[2 * i], 0, 0)
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

#: KEYS: the outbox's counter of a queue, the shared counter of the same queue (before counters were per outbox).
#: ARGV: the count this outbox recorded. Sets the outbox's counter, if it has none, to the shared one's value capped
#: at the record. Returns 1 if it set it.
ADOPT_SHARED_RELAY_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
local shared = redis.call('GET', KEYS[2])
if not shared then
    return 0
end
redis.call('SET', KEYS[1], math.min(tonumber(shared), tonumber(ARGV[1])))
return 1
"""

#: Count the entries of the unacked hash per routing key (the last element of each value), inside Redis.
#: KEYS[1]: the hash. Returns routing_key1, count1, routing_key2, count2, ...
COUNT_UNACKED_BY_QUEUE = """
local counts = {}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
    local key = string.match(value, '"([^"]*)"%s*%]%s*$')
    if key then counts[key] = (counts[key] or 0) + 1 end
end
local out = {}
for key, n in pairs(counts) do
    out[#out + 1] = key
    out[#out + 1] = n
end
return out
"""

#: Put held messages back at the heads of their queues, in one step: what kombu's ``QoS.restore_by_tag`` does per
#: message in a WATCH transaction of its own (a takeover or a worker back from a failover restores hundreds).
#: KEYS: unacked hash, unacked index, then the queues, then their bells (same order). ARGV: per message, newest
#: first, its delivery tag, the number of its queue among the queues (1-based) and the text to push. A message no
#: longer in unacked (acked or restored meanwhile) is not pushed. Returns how many were.
RESTORE_HELD = """
local unacked, index = KEYS[1], KEYS[2]
local nqueues = (#KEYS - 2) / 2
local rung = {}
local restored = 0
for i = 1, #ARGV, 3 do
    local tag = ARGV[i]
    if redis.call('HDEL', unacked, tag) == 1 then
        local q = tonumber(ARGV[i + 1])
        -- The consuming end is the right: the newest goes first, the oldest ends up next in line.
        redis.call('RPUSH', KEYS[2 + q], ARGV[i + 2])
        rung[q] = true
        restored = restored + 1
    end
    redis.call('ZREM', index, tag)
end
for q in pairs(rung) do
    local bell = KEYS[2 + nqueues + q]
    redis.call('LPUSH', bell, '1')
    redis.call('LTRIM', bell, 0, 0)
end
return restored
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
