"""Whether workers can log in to the SMTP server, as they last found it.

Each worker writes what it found; the record expires, so a worker that is
gone does not leave a stale "paused" behind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from mailhub.clock import now_iso
from mailhub.store import keys

#: A status not refreshed for this long (seconds) is forgotten.
STATUS_TTL = 300


@dataclass(frozen=True)
class SmtpStatus:
    """What a worker last found of the SMTP login."""

    paused: bool
    reason: str
    checked_at: str
    worker: str


async def record(redis: Redis, worker: str, *, paused: bool, reason: str = "") -> None:
    """Write what `worker` found now; it replaces any other worker's record."""
    status = SmtpStatus(paused=paused, reason=reason, checked_at=now_iso(), worker=worker)
    await redis.set(keys.SMTP_STATUS, json.dumps(asdict(status)), ex=STATUS_TTL)


async def read(redis: Redis) -> SmtpStatus | None:
    """The last record written, or None if none was written in the last `STATUS_TTL` s."""
    raw = await redis.get(keys.SMTP_STATUS)
    return SmtpStatus(**json.loads(raw)) if raw else None
