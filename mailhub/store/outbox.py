"""The outbox: events for the webhooks and the owner's alerts, queued with what causes them.

A task's end (`email.delivered`, `email.failed`) enters the outbox in the
very script that records it (`ANNOUNCE`, part of the task scripts when
notifications are on), and a change of the sending state (`sending.paused`,
`sending.resumed`) in the script that records the change. So an event
exists exactly when its cause does, and survives restarts with Redis.

Each entry is `<webhook id> <JSON body>`; the body is what every webhook
of the event carries, byte for byte. `fan_out` moves entries on, in one
atomic step each: one webhook delivery per configured URL
(`store.webhooks`), and with alerts on, a failed mail to the next digest's
list, a sending change to the alert mails' list.

An event's `data` is the task's result document, except that `to` holds
the real recipients (a form's result shows them masked: the owner's
notifications do not) and a failure adds `detail`, the full error. An
alert mail's own outcome (its task hash has `alert`) never enters the
outbox: alerts cannot announce themselves in a loop.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from email.utils import getaddresses
from typing import Any

from redis.asyncio import Redis

from mailhub.clock import now_iso
from mailhub.store import keys
from mailhub.store.webhooks import erase_deliveries

#: Lua, put before the task scripts' prelude: `announce` is called by `emit`
#: for every transition and queues the ends of tasks.
ANNOUNCE = """
local function announce(key, event, at, doc)
  if event ~= 'success' and event ~= 'failed' then return end
  local f = redis.call('HMGET', key, 'alert', 'detail', 'to')
  if f[1] then return end
  local data = {}
  for name, value in pairs(doc) do data[name] = value end
  data.to = f[3]
  if event == 'failed' then data.detail = f[2] or '' end
  local kind = event == 'success' and 'email.delivered' or 'email.failed'
  local body = cjson.encode({type=kind, timestamp=at, data=data})
  redis.call('RPUSH', '$OUTBOX', 'msg_' .. doc.task_id .. '_' .. doc.seq .. ' ' .. body)
end
""".replace("$OUTBOX", keys.OUTBOX)
#: The same name doing nothing, for a store without notifications.
SILENT = "local function announce() end\n"

#: KEYS: announced state, outbox. ARGV: "paused" or "running", webhook id, body.
#: Records the state; queues the event only if it changed (nothing announced
#: yet counts as running). Returns 1 if it did.
_SENDING_CHANGED = """
local before = redis.call('GET', KEYS[1]) or 'running'
redis.call('SET', KEYS[1], ARGV[1])
if before == ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2] .. ' ' .. ARGV[3])
return 1
"""

#: KEYS: outbox, webhooks, alerts, digest, digest state, then one endpoint
#: hash per URL. ARGV: most entries to move, now (epoch ms), the delivery
#: hash prefix, the digest's most entries, alerts on ("1"/"0"), then the URLs.
#: Returns how many entries moved.
_FAN_OUT = """
local first_url = 6
local moved = 0
for _ = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  local id, body = string.match(entry, '^(%S+) (.*)$')
  local event = cjson.decode(body)
  for i = first_url, #ARGV do
    local n = i - first_url + 1
    local delivery = id .. ':' .. n
    redis.call('HSET', ARGV[3] .. delivery, 'id', id, 'url', ARGV[i], 'type', event.type,
               'body', body, 'created', ARGV[2], 'attempts', 0)
    redis.call('ZADD', KEYS[2], ARGV[2], delivery)
    redis.call('HINCRBY', KEYS[5 + n], 'pending', 1)
  end
  if ARGV[5] == '1' then
    if event.type == 'email.failed' then
      if redis.call('LLEN', KEYS[4]) < tonumber(ARGV[4]) then
        redis.call('RPUSH', KEYS[4], cjson.encode(event.data))
      else
        redis.call('HINCRBY', KEYS[5], 'skipped', 1)
      end
    elseif event.type ~= 'email.delivered' then
      redis.call('RPUSH', KEYS[3], entry)
    end
  end
  moved = moved + 1
end
return moved
"""

#: Entries one fan-out call moves at most.
FAN_OUT_BATCH = 100
#: Failed mails one digest lists at most; more are only counted.
DIGEST_MAX = 1000


@dataclass(frozen=True)
class SendingStatus:
    """The `data` of a sending.paused / sending.resumed event."""

    paused: bool
    #: Why sending is paused (the SMTP server's reply or the TLS error); "" when it resumed.
    reason: str
    at: str
    #: The worker that found it.
    worker: str


@dataclass(frozen=True)
class OutboxEvent:
    """One event as the outbox keeps it: its webhook id and the JSON body of its webhooks."""

    id: str
    body: str

    @classmethod
    def parse(cls, entry: str) -> OutboxEvent:
        event_id, _, body = entry.partition(" ")
        return cls(event_id, body)

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def new_event_id(kind: str) -> str:
    """A webhook id for an event that is not a task's transition: unique, no dots, no spaces."""
    return f"msg_{kind}_{int(time.time() * 1000)}_{secrets.token_hex(6)}"


class Outbox:
    """Queues the sending state's changes and fans the outbox out; takes a Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._sending_changed = redis.register_script(_SENDING_CHANGED)
        self._fan_out = redis.register_script(_FAN_OUT)

    async def sending_changed(self, status: SendingStatus) -> bool:
        """Record whether sending is paused; queue `sending.paused`/`resumed` if that changed.

        Every worker may call this at every check: only a change of the
        state shared by all of them queues an event. True if one was queued.
        """
        kind = "sending.paused" if status.paused else "sending.resumed"
        body = json.dumps(
            {"type": kind, "timestamp": now_iso(), "data": asdict(status)},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        state = "paused" if status.paused else "running"
        changed = await self._sending_changed(
            keys=[keys.SENDING_ANNOUNCED, keys.OUTBOX], args=[state, new_event_id("sending"), body]
        )
        return bool(changed)

    async def fan_out(self, urls: tuple[str, ...], *, alerts: bool) -> int:
        """Move up to `FAN_OUT_BATCH` events on: a delivery per URL, and to the alerts.

        Returns how many moved (fewer than the batch: the outbox is empty now).
        """
        endpoints = [keys.webhook_endpoint(url) for url in urls]
        moved = await self._fan_out(
            keys=[keys.OUTBOX, keys.WEBHOOKS, keys.ALERTS, keys.DIGEST, keys.DIGEST_STATE, *endpoints],
            args=[
                FAN_OUT_BATCH,
                int(time.time() * 1000),
                keys.webhook(""),
                DIGEST_MAX,
                int(alerts),
                *urls,
            ],
        )
        return int(moved)


async def forget_address(redis: Redis, address: str) -> int:
    """Remove every waiting event about mail to `address`: in the outbox, the webhook
    deliveries and the next digest (for an erasure request). Returns how many.

    A sending change names no one and stays.
    """
    wanted = address.strip().lower()

    def about(data: dict[str, Any]) -> bool:
        return any(addr.lower() == wanted for _, addr in getaddresses([str(data.get("to") or "")]))

    return await _forget(redis, about)


async def forget_tasks(redis: Redis, task_ids: Collection[str]) -> int:
    """Remove every waiting event about these tasks (deleted by the owner). Returns how many."""
    wanted = set(task_ids)
    if not wanted:
        return 0
    return await _forget(redis, lambda data: str(data.get("task_id")) in wanted)


async def _forget(redis: Redis, about: Callable[[dict[str, Any]], bool]) -> int:
    """Remove the waiting events whose data (a result document) `about` matches."""
    removed = await _erase_from_list(
        redis, keys.OUTBOX, lambda e: about(OutboxEvent.parse(e).payload["data"])
    )
    removed += await _erase_from_list(redis, keys.DIGEST, lambda e: about(json.loads(e)))
    return removed + await erase_deliveries(redis, lambda event: about(event.get("data") or {}))


async def _erase_from_list(redis: Redis, key: str, about: Callable[[str], bool]) -> int:
    removed = 0
    for entry in await redis.lrange(key, 0, -1):
        text = entry if isinstance(entry, str) else entry.decode()
        if about(text):
            removed += int(await redis.lrem(key, 0, text))
    return removed
