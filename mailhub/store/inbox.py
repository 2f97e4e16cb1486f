"""Capture mode's inbox: the last mails the capture SMTP server caught, in a capped Redis list.

Any web process shows what the worker of any process caught.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from mailhub.store import keys

#: Mails kept; older ones are dropped.
INBOX_SIZE = 200


async def keep(redis: Redis, mail: dict[str, Any]) -> None:
    """Add `mail` (JSON-serialisable) as the newest, dropping any beyond `INBOX_SIZE`."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush(keys.INBOX, json.dumps(mail, ensure_ascii=False))
        pipe.ltrim(keys.INBOX, 0, INBOX_SIZE - 1)
        await pipe.execute()


async def mails(redis: Redis) -> list[dict[str, Any]]:
    """The caught mails, newest first."""
    return [json.loads(raw) for raw in await redis.lrange(keys.INBOX, 0, -1)]
