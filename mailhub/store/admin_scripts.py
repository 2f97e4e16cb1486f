"""Lua scripts of the owner's operations: re-send, delete, erase, page the index.

Re-sending is a transition like those of `scripts` (same prelude: `emit`,
`entered`), so its event reaches the live streams and the task's timeline.
Deleting removes every trace of a task in one atomic step: its hash, its
index entries, its queue entry or retry, its Idempotency-Key record and the
dev inbox's copy; live followers get a `deleted` notice (`live.event.deleted_task`).
"""

from __future__ import annotations

from mailhub.store import keys, scripts

_OWNER_PRELUDE = """
-- A failed task back on the queue, with a fresh attempt budget; its
-- Message-ID stays. Its age (MAX_QUEUE_AGE) counts from now. Returns 1, 0
-- if the task is not failed, -1 if it is unknown.
local function requeue(key, at)
  local state = redis.call('HGET', key, 'state')
  if state ~= 'failed' then return state and 0 or -1 end
  redis.call('HSET', key, 'state', 'queued', 'attempts', 0,
             'created_ts', math.floor(clock_ms() / 1000))
  redis.call('HDEL', key, 'reason', 'detail', 'last_error', 'next_attempt_at')
  redis.call('HINCRBY', key, 'resends', 1)
  redis.call('PERSIST', key)
  queue_task(key, '$QUEUE')
  emit(key, 'requeued', at)
  entered(key, 'pending')
  return 1
end

-- Removes the task and everything filed about it but its dev inbox copy
-- (see drop_from_inbox); returns its Message-ID, or false if it was gone.
local function forget(task_id, at)
  local key = '$TASK' .. task_id
  if redis.call('EXISTS', key) == 0 then return false end
  local f = redis.call('HMGET', key, 'people', 'entry', 'once', 'message_id')
  local member = member_of(key)
  for _, status in ipairs(STATUSES) do redis.call('ZREM', '$STATUS_INDEX' .. status, member) end
  for digest in string.gmatch(f[1] or '', '%S+') do
    redis.call('ZREM', address_index(digest), member)
  end
  if f[2] then
    -- A send in flight goes on, but its outcome finds no task to record.
    redis.call('XACK', '$QUEUE', '$GROUP', f[2])
    redis.call('XDEL', '$QUEUE', f[2])
  end
  redis.call('ZREM', '$RETRIES', member)
  if f[3] then
    local seen = redis.call('GET', f[3])
    if seen and string.sub(seen, 1, #task_id + 1) == task_id .. ' ' then redis.call('DEL', f[3]) end
  end
  redis.call('DEL', key)
  redis.call('PUBLISH', '$EVENTS', cjson.encode({task_id=task_id, event='deleted', at=at}))
  return f[4] or ''
end

-- Drops the dev inbox's mails with one of `message_ids` (a set), or whose
-- text mentions `address` (lower case; nil: none). Returns how many.
local function drop_from_inbox(message_ids, address)
  local dropped = 0
  for _, raw in ipairs(redis.call('LRANGE', '$INBOX', 0, -1)) do
    local ok, mail = pcall(cjson.decode, raw)
    local mine = ok and type(mail) == 'table' and message_ids[mail.message_id]
    if mine or (address and string.find(string.lower(raw), address, 1, true)) then
      dropped = dropped + redis.call('LREM', '$INBOX', 0, raw)
    end
  end
  return dropped
end
"""

#: KEYS: task. ARGV: at. Returns 1 re-queued, 0 not failed, -1 unknown.
REQUEUE = """
return requeue(KEYS[1], ARGV[1])
"""

#: ARGV: since (epoch ms), most to re-queue, at. Re-queues failed tasks that
#: failed at or after `since`, oldest first. Returns {re-queued, still failed since}.
REQUEUE_FAILED = """
local failed = '$STATUS_INDEX' .. 'failed'
local requeued = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', failed, ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])) do
  if requeue(task_key(member), ARGV[3]) == 1 then
    requeued = requeued + 1
  else
    redis.call('ZREM', failed, member)  -- expired a moment ago: only its entry was left
  end
end
return {requeued, redis.call('ZCOUNT', failed, ARGV[1], '+inf')}
"""

#: ARGV: task id, at. Returns 1 deleted, 0 unknown.
DELETE = """
local message_id = forget(ARGV[1], ARGV[2])
if not message_id then return 0 end
drop_from_inbox({[message_id] = true}, nil)
return 1
"""

#: ARGV: address digest, address (normalized), most tasks to delete, at.
#: Deletes tasks about the address, up to the given number, and the dev
#: inbox's mails that mention it. Returns {1 if tasks remain else 0, the
#: deleted tasks' ids...}.
ERASE = """
local index = '$ADDRESS_INDEX' .. ARGV[1]
local deleted, message_ids = {}, {}
for _, member in ipairs(redis.call('ZRANGE', index, 0, tonumber(ARGV[3]) - 1)) do
  local task_id = task_id_from(member)
  local message_id = forget(task_id, ARGV[4])
  if message_id then
    deleted[#deleted + 1] = task_id
    message_ids[message_id] = true
  end
  redis.call('ZREM', index, member)  -- also an expired task's leftover entry
end
drop_from_inbox(message_ids, ARGV[2])
table.insert(deleted, 1, redis.call('EXISTS', index))
return deleted
"""

#: KEYS: a sorted set of the index. ARGV: highest score ('+inf' for the first
#: page), the task id the last page ended with ('' for the first page), count.
#: Returns up to `count` {member, score} pairs, flattened, that come after
#: the last page in the index's order (newest first; ties by member, descending).
PAGE = """
local after, count = ARGV[2], tonumber(ARGV[3])
local ties = 0
if after ~= '' then
  -- The last task as this index names it (its UUID if it was written before members were compact).
  if not redis.call('ZSCORE', KEYS[1], after) then after = compact(after) end
  ties = redis.call('ZCOUNT', KEYS[1], ARGV[1], ARGV[1])
end
local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'WITHSCORES',
                        'LIMIT', 0, count + ties)
local page = {}
for i = 1, #rows, 2 do
  local later = after ~= '' and tonumber(rows[i + 1]) == tonumber(ARGV[1]) and rows[i] >= after
  if not later and #page < 2 * count then
    page[#page + 1] = rows[i]
    page[#page + 1] = rows[i + 1]
  end
end
return page
"""

#: KEYS: task hashes. ARGV: the Message-ID's domain. Returns for each, in
#: order, what the owner's list shows of it: {to, subject, created_at,
#: message_id, detail, last_error, reason, resends, decoy, result document
#: (JSON)}, or nil if it is gone. Its `created_at` is its timeline's first
#: line (a task written before the lines were compact also has the field);
#: before its first attempt its `message_id` is the one that attempt will fix.
SUMMARIES = """
local rows = {}
for i, key in ipairs(KEYS) do
  local doc = render(key)
  rows[i] = false
  if doc then
    local f = redis.call('HMGET', key, 'to', 'subject', 'created_at', 'message_id', 'detail',
                         'last_error', 'reason', 'resends', 'decoy', 'timeline')
    f[3] = f[3] or select(3, line_fields(first_line(f[10] or ''))) or false
    if not f[4] and not f[9] then f[4] = '<' .. task_id_of(key) .. '@' .. ARGV[1] .. '>' end
    f[10] = doc
    rows[i] = f
  end
end
return rows
"""

_NAMES = {
    "$QUEUE": keys.QUEUE,
    "$RETRIES": keys.RETRIES,
    "$INBOX": keys.INBOX,
}


def source(body: str) -> str:
    """An owner's script: the transitions' prelude, this module's, then `body`."""
    script = _OWNER_PRELUDE + body
    for name, value in _NAMES.items():
        script = script.replace(name, value)
    return scripts.source(script)
