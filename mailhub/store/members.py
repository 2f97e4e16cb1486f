"""How a task is named inside Redis's sets and the queue: 20 characters, not 36.

The task index, the address index, the retries set and the queue stream name
each task by its UUID's 16 bytes in base 85 (RFC 1924's alphabet, as
`base64.b85encode`), 20 characters. A sorted set member of up to 20 bytes
takes Valkey's smaller allocation: about 77 bytes per member instead of 109
for the 36-character UUID, and each task is a member of two sets. Keys
(`keys.task`) and everything a client or the owner sees keep the UUID.

A task written before members were compact keeps its UUID as its member
(its hash still has the `task_id` field that tells it); `task_id` reads both.
"""

from __future__ import annotations

import base64
import uuid

#: Characters of a member written before members were compact: the UUID itself.
_UUID_LENGTH = 36

#: Lua for the scripts (`$TASK` is filled in by `scripts.source`):
#: `task_id_of(key)`, the task id a key names; `compact(task_id)`, the member
#: of a new task; `member_of(key)`, the member of the task at `key`, old or
#: new; `task_id_from(member)` and `task_key(member)`, back; `hex_of`, 20
#: base-85 characters as the 32 hex digits of their bytes.
LUA = """
-- A task's id is its key's suffix: the hash does not repeat it.
local function task_id_of(key)
  return string.sub(key, #'$TASK' + 1)
end

local B85 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~'

local function compact(task_id)
  local hex = string.gsub(task_id, '%-', '')
  local out = {}
  for i = 1, 32, 8 do
    local n = tonumber(string.sub(hex, i, i + 7), 16)
    local digits = {}
    for j = 5, 1, -1 do
      local d = n % 85
      digits[j] = string.sub(B85, d + 1, d + 1)
      n = (n - d) / 85
    end
    out[#out + 1] = table.concat(digits)
  end
  return table.concat(out)
end

-- 20 base-85 characters back to the 32 hex digits of their 16 bytes.
local function hex_of(text)
  local hex = {}
  for i = 1, 20, 5 do
    local n = 0
    for j = i, i + 4 do
      n = n * 85 + string.find(B85, string.sub(text, j, j), 1, true) - 1
    end
    hex[#hex + 1] = string.format('%08x', n)
  end
  return table.concat(hex)
end

local function task_id_from(member)
  if #member == 36 then return member end
  local h = hex_of(member)
  return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-' .. string.sub(h, 13, 16)
         .. '-' .. string.sub(h, 17, 20) .. '-' .. string.sub(h, 21, 32)
end

local function task_key(member)
  return '$TASK' .. task_id_from(member)
end

local function member_of(key)
  if redis.call('HEXISTS', key, 'task_id') == 1 then return task_id_of(key) end
  return compact(task_id_of(key))
end
"""


def member(task_id: str) -> str:
    """The member naming a new task (`task_id`: a UUID) in the indexes, retries and queue."""
    return base64.b85encode(uuid.UUID(task_id).bytes).decode()


def compact(hex_digits: str) -> str:
    """128 bits written as 32 hex digits, in the members' 20 base-85 characters."""
    return base64.b85encode(bytes.fromhex(hex_digits)).decode()


def task_id(name: str) -> str:
    """The task id (UUID) a member names; a member written before is the UUID itself."""
    if len(name) == _UUID_LENGTH:
        return name
    return str(uuid.UUID(bytes=base64.b85decode(name)))
