"""A task's timeline: one short line per transition, kept in its hash.

A line is `<seq> <event> <at> <attempts>`, and for a failure or a retry the
error's full text (at most 500 bytes) as a JSON string: `<at>` is epoch
milliseconds (13 digits where an ISO 8601 time takes 24). The timeline
serves three readers: the owner's view (every line), the result document
(the last line's seq, event and time) and the queue age (the first line is
when the task was accepted). Past `TIMELINE_BYTES` the oldest lines but the
first give way, so a mail deferred for hours does not grow it without end.

Tasks written before hold older lines, still read: JSON objects
(`{"seq":1,"event":...}`), then lines with an ISO 8601 `<at>`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mailhub.clock import iso

#: The timeline a task hash keeps at most (bytes).
TIMELINE_BYTES = 4096

#: Lua for the scripts: `add_line`, `last_line`, `first_line`, `line_fields`,
#: and the time conversions `epoch_ms` (ISO 8601 to ms) and `iso` (back, as
#: `clock.iso` writes it).
LUA = """
-- Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (m > 2 and m - 3 or m + 9) + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end

local function civil_from_days(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m, doy - math.floor((153 * mp + 2) / 5) + 1
end

-- `2026-12-04T08:53:03.088Z` as epoch milliseconds; nil for anything else.
local function epoch_ms(text)
  local y, mo, d, h, mi, s, ms = string.match(
    text, '^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)%.(%d%d%d)Z$')
  if not y then return nil end
  local days = days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return ((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60000 + tonumber(s) * 1000 + tonumber(ms)
end

local function iso(ms)
  local days = math.floor(ms / 86400000)
  local rest = ms - days * 86400000
  local y, m, d = civil_from_days(days)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(rest / 3600000),
                       math.floor(rest / 60000) % 60, math.floor(rest / 1000) % 60, rest % 1000)
end

-- Adds a line to the timeline `text` (`at`: ISO 8601, kept as ms when it
-- parses; `detail`: nil, or the error); returns the new text.
local function add_line(text, seq, event, at, attempts, detail)
  local line = seq .. ' ' .. event .. ' ' .. (epoch_ms(at) or at) .. ' ' .. attempts
  if detail then line = line .. ' ' .. cjson.encode(string.sub(detail, 1, 500)) end
  text = (text or '') .. line .. '\\n'
  if #text > $TIMELINE_BYTES then
    local first = string.find(text, '\\n', 1, true)
    local cut = string.find(text, '\\n', #text - $TIMELINE_BYTES / 2, true)
    text = string.sub(text, 1, first) .. string.sub(text, cut + 1)
  end
  return text
end

-- The last and the first line of a timeline (its text ends with a line break; '' for none).
local function last_line(text)
  local stop = #text - 1
  local start = stop
  while start > 0 and string.byte(text, start) ~= 10 do start = start - 1 end
  return string.sub(text, start + 1, stop)
end

local function first_line(text)
  return string.match(text, '^[^\\n]*')
end

-- A line's seq (a number), event, time (ISO 8601) and time (epoch ms).
local function line_fields(line)
  if string.sub(line, 1, 1) == '{' then
    local old = cjson.decode(line)
    return old.seq, old.event, old.at, epoch_ms(old.at)
  end
  local seq, event, at = string.match(line, '^(%d+) (%S+) (%S+)')
  local ms = tonumber(at)
  if ms then return tonumber(seq), event, iso(ms), ms end
  return tonumber(seq), event, at, at and epoch_ms(at)
end
""".replace("$TIMELINE_BYTES", str(TIMELINE_BYTES))


def entries(text: str) -> list[dict[str, Any]]:
    """A timeline's lines, oldest first: each one's seq, event, at (ISO 8601), attempts, and detail if any."""
    found: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
            continue
        seq, event, at, rest = line.split(" ", 3)
        attempts, _, detail = rest.partition(" ")
        if at.isdigit():
            ms = int(at)
            at = iso(datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000))
        entry: dict[str, Any] = {"seq": int(seq), "event": event, "at": at, "attempts": int(attempts)}
        if detail:
            entry["detail"] = json.loads(detail)
        found.append(entry)
    return found
