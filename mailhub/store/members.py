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

-- 128 bits written as 32 hex digits, in 20 base-85 digits.
local function base85(hex)
  local out = {}
  for group = 0, 3 do
    local n = tonumber(string.sub(hex, group * 8 + 1, group * 8 + 8), 16)
    for j = group * 5 + 5, group * 5 + 1, -1 do
      local d = n % 85
      out[j] = string.byte(B85, d + 1)
      n = (n - d) / 85
    end
  end
  return string.char(unpack(out))
end

local function compact(task_id)
  return base85((string.gsub(task_id, '%-', '')))
end

-- A base-85 digit's value (the byte of one of B85's characters).
local function digit(byte)
  if byte <= 57 and byte >= 48 then return byte - 48 end
  if byte <= 90 and byte >= 65 then return byte - 55 end
  if byte <= 122 and byte >= 97 then return byte - 61 end
  return string.find(B85, string.char(byte), 63, true) - 1
end

-- 20 base-85 characters back to the 32 hex digits of their 16 bytes.
local function hex_of(text)
  local hex = {}
  for i = 1, 20, 5 do
    local a, b, c, d, e = string.byte(text, i, i + 4)
    local n = (((digit(a) * 85 + digit(b)) * 85 + digit(c)) * 85 + digit(d)) * 85 + digit(e)
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

local known_members = {}

local function member_of(key)
  local member = known_members[key]
  if not member then
    member = task_id_of(key)
    if redis.call('HEXISTS', key, 'task_id') == 0 then member = compact(member) end
    known_members[key] = member
  end
  return member
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
