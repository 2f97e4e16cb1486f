"""Lua scripts that change a task's state.

Each script writes the new state, renders the task's result document, stores
it in the hash (`doc`), publishes it on the events channel and moves the queue
entry, all in one atomic step: no state without its queue entry, no
transition without its event. `emit` is the one renderer of the document
that both the result endpoint and the live streams serve. The document is
public, so failures appear in it as a fixed phrase (`mailhub.reasons`); the
full text is kept in the hash's `detail` field, which `emit` never renders.

A submit is counted against the client's rate limits (`over_limit`, from
`rate_limit`) by the same script that queues it, so an accepted submit is one
round trip to Redis.
"""

from __future__ import annotations

from mailhub.store import keys, rate_limit
from mailhub.store import outbox as outbox_scripts

_PRELUDE = """
local PUBLIC = {queued='pending', sending='pending', retrying='pending',
                success='success', failed='failed'}

local function emit(key, event, at)
  local seq = redis.call('HINCRBY', key, 'seq', 1)
  local f = redis.call('HMGET', key, 'task_id', 'to', 'state', 'attempts',
                       'reason', 'last_error', 'next_attempt_at', 'shown_to')
  local doc = {task_id=f[1], to=f[8] or f[2], status=PUBLIC[f[3]],
               attempts=tonumber(f[4]) or 0, seq=seq, event=event, at=at}
  if f[3] == 'failed' then doc.reason = f[5] end
  if f[3] == 'retrying' then
    doc.last_error = f[6]
    doc.next_attempt_at = f[7]
  end
  local json = cjson.encode(doc)
  redis.call('HSET', key, 'doc', json)
  redis.call('PUBLISH', '$EVENTS', json)
  announce(key, event, at, doc)
  return json
end

local function done_with_entry(queue, entry_id)
  redis.call('XACK', queue, '$GROUP', entry_id)
  redis.call('XDEL', queue, entry_id)
end

-- True when the caller still owns the attempt it is reporting on: a worker
-- that stalled past the claim timeout may report after another took over.
local function owns_attempt(key, attempt)
  local f = redis.call('HMGET', key, 'state', 'attempts')
  return f[1] == 'sending' and f[2] == attempt
end
"""

#: KEYS: task, queue, idempotency key (the task key again when there is none),
#: then one rate-limit counter prefix per window (see `over_limit`).
#: ARGV: at, body fingerprint, idempotency TTL, decoy retention (0: a real
#: task), amount and seconds of each window, then the task's values: task_id,
#: to, subject, body, username, message_id, created_ts, reply_to, html,
#: from_name, rendered, alert, shown_to (in this order, without names: fewer
#: arguments).
#: Returns {task id, 1} when queued, {earlier task id, 0} for a repeat of the
#: same body under the same idempotency key (or of this very call), {earlier
#: task id, -1} for another body, {seconds until the window resets, -2,
#: window number} over a rate limit (then nothing but the counters is written).
#: A decoy (a filled honeypot) is written and answered like a real task, but
#: never queued: it stays `queued` until it expires after the decoy retention.
ENQUEUE = """
local wait, window = over_limit(4, 5)
if wait then return {wait, -2, window} end
local once = KEYS[3] ~= KEYS[1]
-- A retry of this very call (its reply was lost with the connection).
if redis.call('EXISTS', KEYS[1]) == 1 then return {redis.call('HGET', KEYS[1], 'task_id'), 0} end
if once then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local task_id, fingerprint = string.match(seen, '^(%S+) (.*)$')
    if fingerprint == ARGV[2] then return {task_id, 0} end
    return {task_id, -1}
  end
end
local v = 5 + 2 * (#KEYS - 3)
local task_id = ARGV[v]
redis.call('HSET', KEYS[1], 'task_id', task_id, 'to', ARGV[v + 1], 'subject', ARGV[v + 2],
           'body', ARGV[v + 3], 'username', ARGV[v + 4], 'message_id', ARGV[v + 5],
           'created_ts', ARGV[v + 6], 'created_at', ARGV[1], 'state', 'queued', 'attempts', 0)
-- A form's parts, only when present: a contract mail's hash stays as it was.
local optional = {'reply_to', 'html', 'from_name', 'rendered', 'alert', 'shown_to'}
for i, name in ipairs(optional) do
  local value = ARGV[v + 6 + i]
  if value and value ~= '' and value ~= '0' then redis.call('HSET', KEYS[1], name, value) end
end
if ARGV[4] == '0' then
  redis.call('XADD', KEYS[2], '*', 'task_id', task_id)
else
  redis.call('HSET', KEYS[1], 'decoy', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
emit(KEYS[1], 'queued', ARGV[1])
if once then
  redis.call('SET', KEYS[3], task_id .. ' ' .. ARGV[2], 'EX', ARGV[3])
end
return {task_id, 1}
"""

#: KEYS: task, queue. ARGV: entry id, at, max attempts, retention seconds,
#: now (epoch s), max queue age (s), the public reasons of a task whose last
#: attempt was interrupted and of one too old to send.
#: Returns the fields to send with; false when there is nothing to send; the
#: detail when it has just failed the task instead (interrupted or too old).
BEGIN_ATTEMPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'success' or state == 'failed' then
  done_with_entry(KEYS[2], ARGV[1])
  return false
end
local f = redis.call('HMGET', KEYS[1], 'attempts', 'created_ts', 'detail')
local attempts = tonumber(f[1])
local reason, detail = nil, nil
if attempts >= tonumber(ARGV[3]) then
  -- The last allowed attempt was interrupted (its worker died mid-send).
  reason = ARGV[7]
  detail = 'failed after ' .. attempts .. ' attempts: the last attempt was interrupted'
  if f[3] then detail = detail .. '; the one before: ' .. f[3] end
elseif tonumber(ARGV[5]) - (tonumber(f[2]) or tonumber(ARGV[5])) > tonumber(ARGV[6]) then
  reason = ARGV[8]
  detail = 'not delivered within ' .. ARGV[6] .. ' s of being accepted'
  if f[3] then detail = detail .. ': ' .. f[3] end
end
if reason then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', reason, 'detail', detail)
  emit(KEYS[1], 'failed', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  done_with_entry(KEYS[2], ARGV[1])
  return detail
end
redis.call('HSET', KEYS[1], 'state', 'sending', 'attempts', attempts + 1)
emit(KEYS[1], 'attempt', ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'task_id', 'to', 'subject', 'body', 'username',
                    'message_id', 'attempts', 'reply_to', 'html', 'from_name', 'rendered')
for i = 8, 11 do f[i] = f[i] or '' end
return f
"""

#: KEYS: task, queue. ARGV: entry id, attempt, at, retention seconds.
SUCCEED = """
if owns_attempt(KEYS[1], ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'success', 'delivered_at', ARGV[3])
  emit(KEYS[1], 'success', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
done_with_entry(KEYS[2], ARGV[1])
"""

#: KEYS: task, queue. ARGV: entry id, attempt, at, retention seconds, public
#: reason, detail.
FAIL = """
if owns_attempt(KEYS[1], ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', ARGV[5], 'detail', ARGV[6])
  emit(KEYS[1], 'failed', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
done_with_entry(KEYS[2], ARGV[1])
"""

#: KEYS: task, queue, retries. ARGV: entry id, attempt, at, due (epoch ms),
#: due (ISO 8601), public last error, whether the attempt counts (1 or 0),
#: detail.
RETRY_LATER = """
if owns_attempt(KEYS[1], ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'retrying', 'last_error', ARGV[6],
             'next_attempt_at', ARGV[5], 'detail', ARGV[8])
  if ARGV[7] == '0' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
  redis.call('ZADD', KEYS[3], ARGV[4], redis.call('HGET', KEYS[1], 'task_id'))
  emit(KEYS[1], 'retry', ARGV[3])
end
done_with_entry(KEYS[2], ARGV[1])
"""

#: KEYS: retries, queue. ARGV: now (epoch ms), batch size.
#: Moves retries that are due back onto the queue; returns how many moved.
PROMOTE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, task_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], task_id)
  redis.call('XADD', KEYS[2], '*', 'task_id', task_id)
end
return #due
"""


def source(body: str, *, outbox: bool = False) -> str:
    """The full script: the shared prelude, then `body`.

    With `outbox`, the end of a task is also queued for webhooks and alerts (`outbox.ANNOUNCE`).
    """
    prelude = _PRELUDE.replace("$EVENTS", keys.EVENTS).replace("$GROUP", keys.WORKERS_GROUP)
    announce = outbox_scripts.ANNOUNCE if outbox else outbox_scripts.SILENT
    return announce + prelude + rate_limit.OVER_LIMIT + body
