"""Lua scripts that change a task's state.

Each script writes the new state, adds the transition to the task's timeline,
renders the task's result document, publishes it on the events channel and
moves the queue entry, all in one atomic step: no state without its queue
entry, no transition without its event. The document is not stored: `render`
builds it from the hash's fields and the timeline's last line (seq, event,
time), so the result endpoint (`RESULT`) and the live streams serve the same
text from one renderer. The document is public, so failures appear in it as
a fixed phrase (`mailhub.reasons`); the full text is kept in the hash's
`detail` field, which the document never shows.

A submit is counted against the client's rate limits (`over_limit`, from
`rate_limit`) by the same script that queues it, so an accepted submit is one
round trip to Redis.

The same steps keep what the owner's view reads (`store.index`): `entered`
files the task under its public status and its addresses whenever that
status changes, and `emit` adds each transition to the task's timeline.
"""

from __future__ import annotations

from mailhub.store import keys, members, rate_limit, timeline
from mailhub.store import outbox as outbox_scripts

#: Lua that renders a task's result document (`render`), all a poll needs.
_DOCUMENT = """
local PUBLIC = {queued='pending', sending='pending', retrying='pending',
                success='success', failed='failed'}

-- The fields the result document shows, then what a caller reads with them.
local function read_shown(key, ...)
  return redis.call('HMGET', key, 'state', 'to', 'attempts', 'reason', 'last_error',
                    'next_attempt_at', 'shown_to', ...)
end

-- The result document of the task at `key`: `f` as `read_shown` read it,
-- with the seq, event and time of its last transition. Nil if unknown.
local function document(key, f, seq, event, at)
  if not f[1] then return nil end
  local doc = {task_id=task_id_of(key), to=f[7] or f[2], status=PUBLIC[f[1]],
               attempts=tonumber(f[3]) or 0, seq=seq, event=event, at=at}
  if f[1] == 'failed' then doc.reason = f[4] end
  if f[1] == 'retrying' then
    doc.last_error = f[5]
    doc.next_attempt_at = f[6]
  end
  return doc
end

-- The result document as JSON, as the last transition published it (the
-- timeline's last line has its seq, event and time); false if unknown. A
-- hash written before documents were rendered (it has `doc`) keeps its
-- stored one until its next transition.
local function render(key)
  local f = read_shown(key, 'timeline', 'doc')
  if f[9] then return f[9] end
  if not f[8] then return false end
  local seq, event, at = line_fields(last_line(f[8]))
  local doc = document(key, f, seq, event, at)
  return doc and cjson.encode(doc) or false
end

"""

_PRELUDE = """
local STATUSES = {'pending', 'success', 'failed'}

local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The address index of a digest in `people` (base 85; hex in a task written before).
local function address_index(digest)
  return '$ADDRESS_INDEX' .. (#digest == 32 and digest or hex_of(digest))
end

-- Files the task (`member`, as `member_of` names it) under each address
-- digest in `people`, scored `now`. With a `retention` (it has ended, or is a
-- decoy) entries older than its hash's lifetime go, and the set expires with
-- its last task; without (pending), the set stays.
local function file_under_addresses(member, people, now, retention)
  for digest in string.gmatch(people or '', '%S+') do
    local index = address_index(digest)
    redis.call('ZADD', index, now, member)
    if retention then
      redis.call('ZREMRANGEBYSCORE', index, '-inf', now - tonumber(retention) * 1000)
      redis.call('EXPIRE', index, retention)
    else
      redis.call('PERSIST', index)
    end
  end
end

-- The task entered public status `status` (accepted or re-sent: pending;
-- delivered; failed): it moves to that status's index and is re-filed under
-- each of its addresses, scored now. A finished task's entries go with its
-- hash, `retention` seconds after it ended (nil while pending: no expiry).
-- This is also where a delivered/failed notification would be queued.
local function entered(key, status, retention)
  local member, now = member_of(key), clock_ms()
  for _, other in ipairs(STATUSES) do
    if other ~= status then redis.call('ZREM', '$STATUS_INDEX' .. other, member) end
  end
  local index = '$STATUS_INDEX' .. status
  redis.call('ZADD', index, now, member)
  if retention then redis.call('ZREMRANGEBYSCORE', index, '-inf', now - tonumber(retention) * 1000) end
  file_under_addresses(member, redis.call('HGET', key, 'people'), now, retention)
end

-- The task ended (`success` or `failed`): filed so, its queue entry
-- forgotten (it is acknowledged), and the hash expires after `retention`.
local function finished(key, status, retention)
  entered(key, status, retention)
  redis.call('HDEL', key, 'entry')
  redis.call('EXPIRE', key, retention)
end

-- Puts the task on the queue (named by its member) and remembers its entry
-- (a deleted task's goes too).
local function queue_task(key, queue)
  redis.call('HSET', key, 'entry', redis.call('XADD', queue, '*', 'task_id', member_of(key)))
end

-- Records a transition: its timeline line, then its document, published
-- (and announced to webhooks and alerts). Returns the document as JSON.
local function emit(key, event, at)
  local f = read_shown(key, 'timeline', 'doc', 'detail')
  local seq = (line_fields(last_line(f[8] or '')) or 0) + 1
  local detail = nil
  if f[1] == 'failed' or f[1] == 'retrying' then
    detail = f[10] or (f[1] == 'failed' and f[4]) or f[5] or ''
  end
  redis.call('HSET', key, 'timeline', add_line(f[8], seq, event, at, tonumber(f[3]) or 0, detail))
  if f[9] then redis.call('HDEL', key, 'doc', 'seq') end  -- written before: rendered from now on
  local doc = document(key, f, seq, event, at)
  local json = cjson.encode(doc)
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
-- An attempt whose start a failover lost (the new primary has the task still
-- waiting, one attempt short) is taken as begun here, so its outcome counts
-- and the task does not wait for an entry this outcome removes.
local function owns_attempt(key, attempt)
  local f = redis.call('HMGET', key, 'state', 'attempts')
  if f[1] == 'sending' then return f[2] == attempt end
  if (f[1] == 'queued' or f[1] == 'retrying') and (tonumber(f[2]) or 0) + 1 == tonumber(attempt) then
    redis.call('HSET', key, 'state', 'sending', 'attempts', attempt)
    return true
  end
  return false
end
"""

#: KEYS: task, queue, idempotency key (the task key again when there is none),
#: then one rate-limit counter prefix per window (see `over_limit`).
#: ARGV: at, body fingerprint, idempotency TTL, decoy retention (0: a real
#: task), amount and seconds of each window, then the task's values: task_id,
#: to, subject, body, username, reply_to, html,
#: from_name, rendered, alert, shown_to (in this order, without names: fewer
#: arguments), and last the digests of the task's addresses (`addresses.people`),
#: space-separated.
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
-- A repeat answers with the earlier task after writing something, so that a WAIT
-- after this call (see `replication`) covers the earlier task's writes too.
-- A retry of this very call (its reply was lost with the connection):
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', redis.call('HGET', KEYS[1], 'state'))
  return {task_id_of(KEYS[1]), 0}
end
if once then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    redis.call('SET', KEYS[3], seen, 'KEEPTTL')
    local task_id, fingerprint = string.match(seen, '^(%S+) (.*)$')
    if fingerprint == ARGV[2] then return {task_id, 0} end
    return {task_id, -1}
  end
end
local v = 5 + 2 * (#KEYS - 3)
local task_id = ARGV[v]
redis.call('HSET', KEYS[1], 'to', ARGV[v + 1], 'subject', ARGV[v + 2], 'body', ARGV[v + 3],
           'username', ARGV[v + 4], 'state', 'queued')
-- A form's parts, only when present: a contract mail's hash stays as it was.
local optional = {'reply_to', 'html', 'from_name', 'rendered', 'alert', 'shown_to'}
for i, name in ipairs(optional) do
  local value = ARGV[v + 4 + i]
  if value and value ~= '' and value ~= '0' then redis.call('HSET', KEYS[1], name, value) end
end
if ARGV[#ARGV] ~= '' then redis.call('HSET', KEYS[1], 'people', ARGV[#ARGV]) end
if ARGV[4] == '0' then
  queue_task(KEYS[1], KEYS[2])
else
  redis.call('HSET', KEYS[1], 'decoy', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
emit(KEYS[1], 'queued', ARGV[1])
if ARGV[4] == '0' then
  entered(KEYS[1], 'pending')
else
  file_under_addresses(compact(task_id), redis.call('HGET', KEYS[1], 'people'), clock_ms(), ARGV[4])
end
if once then
  redis.call('SET', KEYS[3], task_id .. ' ' .. ARGV[2], 'EX', ARGV[3])
  redis.call('HSET', KEYS[1], 'once', KEYS[3])
end
return {task_id, 1}
"""

#: KEYS: task, queue. ARGV: entry id, at, max attempts, retention seconds,
#: now (epoch s), max queue age (s), the public reasons of a task whose last
#: attempt was interrupted and of one too old to send, the Message-ID's domain.
#: Returns the fields to send with; false when there is nothing to send; 0
#: when the task is gone (the entry is dropped); the detail when it has just
#: failed the task instead (interrupted or too old).
BEGIN_ATTEMPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  done_with_entry(KEYS[2], ARGV[1])
  return 0
end
if state == 'success' or state == 'failed' then
  done_with_entry(KEYS[2], ARGV[1])
  return false
end
local f = redis.call('HMGET', KEYS[1], 'attempts', 'created_ts', 'detail', 'timeline')
local attempts = tonumber(f[1]) or 0  -- none yet: the field comes with the first
-- Its queue age counts from its re-send (`created_ts`), else from its acceptance.
local since = tonumber(f[2]) or (select(4, line_fields(first_line(f[4] or ''))) or 0) / 1000
local reason, detail = nil, nil
if attempts >= tonumber(ARGV[3]) then
  -- The last allowed attempt was interrupted (its worker died mid-send).
  reason = ARGV[7]
  detail = 'failed after ' .. attempts .. ' attempts: the last attempt was interrupted'
  if f[3] then detail = detail .. '; the one before: ' .. f[3] end
elseif since > 0 and tonumber(ARGV[5]) - since > tonumber(ARGV[6]) then
  reason = ARGV[8]
  detail = 'not delivered within ' .. ARGV[6] .. ' s of being accepted'
  if f[3] then detail = detail .. ': ' .. f[3] end
end
if reason then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', reason, 'detail', detail)
  emit(KEYS[1], 'failed', ARGV[2])
  finished(KEYS[1], 'failed', ARGV[4])
  done_with_entry(KEYS[2], ARGV[1])
  return detail
end
redis.call('HSET', KEYS[1], 'state', 'sending', 'attempts', attempts + 1)
-- The Message-ID is fixed at the first attempt and kept for the later ones,
-- so a duplicate after an ambiguous failure is recognisable; unique because
-- the task id is.
redis.call('HSETNX', KEYS[1], 'message_id', '<' .. task_id_of(KEYS[1]) .. '@' .. ARGV[9] .. '>')
emit(KEYS[1], 'attempt', ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'to', 'subject', 'body', 'username', 'message_id',
                    'attempts', 'reply_to', 'html', 'from_name', 'rendered')
table.insert(f, 1, task_id_of(KEYS[1]))
for i = 8, 11 do f[i] = f[i] or '' end
return f
"""

#: KEYS: task, queue. ARGV: entry id, attempt, at, retention seconds.
SUCCEED = """
if owns_attempt(KEYS[1], ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'success')
  emit(KEYS[1], 'success', ARGV[3])
  finished(KEYS[1], 'success', ARGV[4])
end
done_with_entry(KEYS[2], ARGV[1])
"""

#: KEYS: task, queue. ARGV: entry id, attempt, at, retention seconds, public
#: reason, detail.
FAIL = """
if owns_attempt(KEYS[1], ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', ARGV[5], 'detail', ARGV[6])
  emit(KEYS[1], 'failed', ARGV[3])
  finished(KEYS[1], 'failed', ARGV[4])
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
  redis.call('ZADD', KEYS[3], ARGV[4], member_of(KEYS[1]))
  emit(KEYS[1], 'retry', ARGV[3])
end
done_with_entry(KEYS[2], ARGV[1])
"""

#: KEYS: task. Returns its result document (JSON), or false if it is unknown.
RESULT = """
return render(KEYS[1])
"""

#: KEYS: retries, queue. ARGV: now (epoch ms), batch size.
#: Moves retries that are due back onto the queue; returns how many moved.
PROMOTE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local key = task_key(member)
  if redis.call('EXISTS', key) == 1 then queue_task(key, KEYS[2]) end
end
return #due
"""


_NAMES = {
    "$EVENTS": keys.EVENTS,
    "$GROUP": keys.WORKERS_GROUP,
    "$STATUS_INDEX": keys.STATUS_INDEX,
    "$ADDRESS_INDEX": keys.ADDRESS_INDEX,
    "$TASK": keys.task(""),
}


def source(body: str, *, outbox: bool = False) -> str:
    """The full script: the shared prelude, then `body`, with the key names filled in.

    With `outbox`, the end of a task is also queued for webhooks and alerts (`outbox.ANNOUNCE`).
    """
    announce = outbox_scripts.ANNOUNCE if outbox else outbox_scripts.SILENT
    return _named(announce + members.LUA + timeline.LUA + _DOCUMENT + _PRELUDE + rate_limit.OVER_LIMIT + body)


def reader_source(body: str) -> str:
    """A script that only reads a task: `render` and what it needs, then `body` (lighter than `source`)."""
    return _named(members.LUA + timeline.LUA + _DOCUMENT + body)


def _named(script: str) -> str:
    for name, value in _NAMES.items():
        script = script.replace(name, value)
    return script
