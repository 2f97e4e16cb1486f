"""The owner's alert mails in Redis: sending changes to mail about, failed mail for the digest.

`Outbox.fan_out` fills both lists. A sending change stays on its list until
its mail is queued (under an idempotency key made from its webhook id, so
two workers, or one that died half-way, queue it once). Failed mails wait
for the next digest; `keys.DIGEST_HOLD` exists for ALERT_INTERVAL after a
digest was queued, so any number of workers queue at most one per interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from mailhub.clock import now_iso
from mailhub.store import keys
from mailhub.store.outbox import OutboxEvent

#: KEYS: digest, digest state, hold. ARGV: interval (ms).
#: Returns {entries, skipped} if a digest is due (the hold is taken), else false.
_TAKE_DIGEST = """
local skipped = tonumber(redis.call('HGET', KEYS[2], 'skipped') or '0')
if redis.call('LLEN', KEYS[1]) == 0 and skipped == 0 then return false end
if not redis.call('SET', KEYS[3], 1, 'NX', 'PX', ARGV[1]) then return false end
return {redis.call('LRANGE', KEYS[1], 0, -1), skipped}
"""


@dataclass(frozen=True)
class Digest:
    """Failed mails for one digest: those listed (oldest first), and how many more were only counted."""

    failures: list[dict[str, Any]]
    skipped: int

    @property
    def count(self) -> int:
        return len(self.failures) + self.skipped


@dataclass(frozen=True)
class AlertState:
    """What waits for the owner's mail, for the dashboard."""

    #: Sending changes whose alert mail is not queued yet.
    notices_waiting: int
    #: Failed mails waiting for the next digest (listed or only counted).
    failures_waiting: int
    last_digest_at: str | None
    #: Seconds until another digest may be queued (0: now).
    next_digest_in: float


class AlertStore:
    """Every Redis command on the alert lists; takes a Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take_digest = redis.register_script(_TAKE_DIGEST)

    async def notices(self, count: int = 10) -> list[OutboxEvent]:
        """The oldest sending changes whose mail is not queued yet."""
        entries = await self.redis.lrange(keys.ALERTS, 0, count - 1)
        return [OutboxEvent.parse(e if isinstance(e, str) else e.decode()) for e in entries]

    async def notice_done(self, notice: OutboxEvent) -> None:
        """Forget a sending change: its mail is queued."""
        await self.redis.lrem(keys.ALERTS, 1, f"{notice.id} {notice.body}")

    async def take_digest(self, interval: float) -> Digest | None:
        """The failed mails for a digest, if any wait and none was queued in the last `interval` s.

        Taking one starts the interval; call `digest_queued` once its mail is queued.
        """
        taken: Any = await self._take_digest(
            keys=[keys.DIGEST, keys.DIGEST_STATE, keys.DIGEST_HOLD], args=[int(interval * 1000)]
        )
        if not taken:
            return None
        entries, skipped = taken
        return Digest([json.loads(entry) for entry in entries], int(skipped))

    async def digest_queued(self, digest: Digest) -> None:
        """Forget the failures `digest` listed and counted (later ones stay for the next)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.ltrim(keys.DIGEST, len(digest.failures), -1)
            pipe.hincrby(keys.DIGEST_STATE, "skipped", -digest.skipped)
            pipe.hset(keys.DIGEST_STATE, "last_digest_at", now_iso())
            await pipe.execute()


async def alert_state(redis: Redis) -> AlertState:
    """The alert lists as the dashboard shows them."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.llen(keys.ALERTS)
        pipe.llen(keys.DIGEST)
        pipe.hmget(keys.DIGEST_STATE, "skipped", "last_digest_at")
        pipe.pttl(keys.DIGEST_HOLD)
        notices, listed, (skipped, last_at), hold_ms = await pipe.execute()
    return AlertState(
        notices_waiting=int(notices),
        failures_waiting=int(listed) + int(skipped or 0),
        last_digest_at=last_at,
        next_digest_in=max(0, int(hold_ms)) / 1000,
    )
