"""Webhook deliveries in Redis: waiting, claimed, retried, done or dropped; and their counts.

One delivery is one event to one URL: a hash (`keys.webhook`) holding the
body, the URL and the attempts, and a member of the `keys.WEBHOOKS` sorted
set scored by when it is due. Claiming a due delivery pushes its score to
the end of a lease in the same script, so two workers never POST it at
once, and a worker that dies mid-POST leaves it due again when the lease
ends. The attempt number is the claim's token: an outcome reported by a
worker whose lease ran out (another took over) does not reschedule it.

Totals (`keys.WEBHOOK_TOTALS`) and per-URL counts (`keys.webhook_endpoint`)
are kept by the same scripts, for the dashboard (`delivery_state`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from mailhub.clock import iso
from mailhub.store import keys

#: KEYS: webhooks. ARGV: now (epoch ms), lease end (epoch ms), most to claim,
#: delivery hash prefix. Returns {delivery, id, url, body, created, attempt} rows.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local rows = {}
for _, delivery in ipairs(due) do
  local key = ARGV[4] .. delivery
  local f = redis.call('HMGET', key, 'id', 'url', 'body', 'created')
  if f[1] then
    redis.call('ZADD', KEYS[1], ARGV[2], delivery)
    local attempt = redis.call('HINCRBY', key, 'attempts', 1)
    rows[#rows + 1] = {delivery, f[1], f[2], f[3], f[4], attempt}
  else
    redis.call('ZREM', KEYS[1], delivery)
  end
end
return rows
"""

#: KEYS: webhooks, delivery, totals, endpoint. ARGV: delivery, attempt,
#: outcome ("delivered", "failed", "give_up"), now (epoch ms), now (ISO),
#: next due (epoch ms), max age (ms), HTTP status (or ""), error.
#: Returns "delivered", "retry", "dropped" or "stale" (another worker holds it now).
_RECORD = """
local function finish(counter)
  redis.call('HINCRBY', KEYS[3], counter, 1)
  redis.call('HINCRBY', KEYS[4], counter, 1)
  redis.call('HINCRBY', KEYS[4], 'pending', -1)
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local f = redis.call('HMGET', KEYS[2], 'attempts', 'created')
if not f[1] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 'stale'
end
if ARGV[3] == 'delivered' then
  redis.call('HSET', KEYS[3], 'last_success_at', ARGV[5])
  redis.call('HSET', KEYS[4], 'last_success_at', ARGV[5], 'last_status', ARGV[8])
  finish('delivered')
  return 'delivered'
end
for _, key in ipairs({KEYS[3], KEYS[4]}) do
  redis.call('HINCRBY', key, 'failed_attempts', 1)
  redis.call('HSET', key, 'last_failure_at', ARGV[5], 'last_error', ARGV[9], 'last_status', ARGV[8])
end
if f[1] ~= ARGV[2] then return 'stale' end
local expires = tonumber(f[2]) + tonumber(ARGV[7])
if ARGV[3] == 'give_up' or tonumber(ARGV[4]) >= expires then
  finish('dropped')
  return 'dropped'
end
redis.call('HSET', KEYS[2], 'last_error', ARGV[9])
redis.call('ZADD', KEYS[1], math.min(tonumber(ARGV[6]), expires), ARGV[1])
return 'retry'
"""

#: KEYS: webhooks, delivery. ARGV: delivery, attempt, now (epoch ms).
#: Makes a claimed delivery due now again (its worker is stopping), if it still holds it.
_RELEASE = """
if redis.call('HGET', KEYS[2], 'attempts') == ARGV[2] then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
"""


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery: one event's webhook to one URL, on its `attempt`-th try."""

    delivery: str
    #: The webhook id: the same on every attempt and for every URL of one event.
    id: str
    url: str
    body: str
    #: When the event was fanned out (epoch ms).
    created_ms: int
    attempt: int


@dataclass(frozen=True)
class EndpointState:
    """One URL's deliveries, for the dashboard (the URL without credentials or query)."""

    url: str
    pending: int
    delivered: int
    failed_attempts: int
    dropped: int
    last_success_at: str | None
    last_failure_at: str | None
    last_status: str | None
    last_error: str | None


@dataclass(frozen=True)
class WebhookState:
    """What the dashboard shows of webhooks: waiting, counts over all time, the last outcomes."""

    configured: bool
    pending: int
    #: When the next waiting delivery is due (ISO), if any waits.
    next_attempt_at: str | None
    delivered: int
    failed_attempts: int
    dropped: int
    last_success_at: str | None
    last_failure_at: str | None
    last_error: str | None
    endpoints: list[EndpointState] = field(default_factory=list)


class WebhookQueue:
    """Every Redis command on webhook deliveries; takes a Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)

    async def claim_due(self, count: int, *, lease: float) -> list[Delivery]:
        """Up to `count` due deliveries, each held by this caller for `lease` seconds."""
        now_ms = int(time.time() * 1000)
        rows: Any = await self._claim(
            keys=[keys.WEBHOOKS], args=[now_ms, now_ms + int(lease * 1000), count, keys.webhook("")]
        )
        return [Delivery(str(d), str(i), str(u), str(b), int(c), int(a)) for d, i, u, b, c, a in rows]

    async def record(
        self,
        delivery: Delivery,
        outcome: str,
        *,
        retry_in: float = 0.0,
        max_age: float,
        status: int | None = None,
        error: str = "",
    ) -> str:
        """Record one attempt's `outcome`: "delivered", "failed" (retry in `retry_in` s) or "give_up".

        A failed delivery older than `max_age` seconds is dropped instead.
        Returns what became of it: delivered, retry, dropped, or stale (the
        lease ran out and another worker holds it now).
        """
        now = time.time()
        result = await self._record(
            keys=[
                keys.WEBHOOKS,
                keys.webhook(delivery.delivery),
                keys.WEBHOOK_TOTALS,
                keys.webhook_endpoint(delivery.url),
            ],
            args=[
                delivery.delivery,
                delivery.attempt,
                outcome,
                int(now * 1000),
                _iso(now),
                int((now + retry_in) * 1000),
                int(max_age * 1000),
                "" if status is None else status,
                error[:500],
            ],
        )
        return str(result)

    async def release(self, delivery: Delivery) -> None:
        """Give a claimed delivery back, due at once (its POST was cut off by a stop)."""
        await self._release(
            keys=[keys.WEBHOOKS, keys.webhook(delivery.delivery)],
            args=[delivery.delivery, delivery.attempt, int(time.time() * 1000)],
        )


async def pending_deliveries(redis: Redis) -> int:
    """Webhook deliveries waiting (or being POSTed), over all URLs."""
    return int(await redis.zcard(keys.WEBHOOKS))


async def delivery_state(redis: Redis, urls: tuple[str, ...]) -> WebhookState:
    """Webhook delivery as the dashboard shows it: pending, counts, last outcomes, per URL.

    `urls` are the configured ones (`Settings.webhook_urls`); URLs are shown
    without user, password or query, which may hold credentials.
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.WEBHOOKS)
        pipe.zrange(keys.WEBHOOKS, 0, 0, withscores=True)
        pipe.hgetall(keys.WEBHOOK_TOTALS)
        for url in urls:
            pipe.hgetall(keys.webhook_endpoint(url))
        pending, first, totals, *per_url = await pipe.execute()
    endpoints = [
        EndpointState(
            url=shown_url(url),
            pending=max(0, int(counts.get("pending", 0))),
            delivered=int(counts.get("delivered", 0)),
            failed_attempts=int(counts.get("failed_attempts", 0)),
            dropped=int(counts.get("dropped", 0)),
            last_success_at=counts.get("last_success_at"),
            last_failure_at=counts.get("last_failure_at"),
            last_status=counts.get("last_status") or None,
            last_error=counts.get("last_error"),
        )
        for url, counts in zip(urls, per_url)
    ]
    return WebhookState(
        configured=bool(urls),
        pending=int(pending),
        next_attempt_at=_iso(first[0][1] / 1000) if first else None,
        delivered=int(totals.get("delivered", 0)),
        failed_attempts=int(totals.get("failed_attempts", 0)),
        dropped=int(totals.get("dropped", 0)),
        last_success_at=totals.get("last_success_at"),
        last_failure_at=totals.get("last_failure_at"),
        last_error=totals.get("last_error"),
        endpoints=endpoints,
    )


def shown_url(url: str) -> str:
    """`url` without user, password, query or fragment: what may be shown and logged."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _iso(epoch: float) -> str:
    return iso(datetime.fromtimestamp(epoch, UTC))


#: KEYS: webhooks, delivery, endpoint. ARGV: delivery. Removes a waiting delivery.
_ERASE = """
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'pending', -1)
return 1
"""


async def erase_deliveries(redis: Redis, about: Callable[[dict[str, Any]], bool], batch: int = 500) -> int:
    """Remove every waiting delivery whose event `about` matches (a dict: the parsed body).

    For an erasure request: a waiting webhook holds its mail's result
    document, recipient included. Returns how many were removed.
    """
    erase = redis.register_script(_ERASE)
    removed, cursor = 0, 0
    while True:
        cursor, scanned = await redis.zscan(keys.WEBHOOKS, cursor, count=batch)
        members = [str(delivery) for delivery, _ in scanned]
        async with redis.pipeline(transaction=False) as pipe:
            for delivery in members:
                pipe.hmget(keys.webhook(delivery), "body", "url")
            rows = await pipe.execute()
        for delivery, (body, url) in zip(members, rows):
            if body and url and about(json.loads(body)):
                keys_ = [keys.WEBHOOKS, keys.webhook(delivery), keys.webhook_endpoint(url)]
                removed += int(await erase(keys=keys_, args=[delivery]))
        if cursor == 0:
            return removed
