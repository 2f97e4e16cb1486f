"""How many replicas must hold a submit's write before `queued` is answered.

Redis replicates asynchronously: a write the primary confirmed may not have
reached any replica when the primary dies, and a failover then promotes a
replica without it. Redis's `WAIT n timeout`, sent on the connection that
made the writes, returns once `n` replicas have acknowledged them (or when
the timeout passes, with how many did). The batcher sends it after a batch
of submits (`batching`), so one WAIT covers them all.

`REDIS_MIN_REPLICAS=auto` (the default) waits for 1 replica when the primary
has one online, else for none: a lone Redis, or a new primary whose replicas
have not come back yet, answers at once, since there is nothing to wait for.
The primary's replicas are counted from `INFO replication` every few seconds
(a primary gains and loses replicas, and after a failover it is another
server), and at once after a WAIT that fell short.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)

#: Seconds between looks at how many replicas the primary has (auto mode).
REFRESH_INTERVAL = 5.0
#: Seconds between log lines about WAITs falling short, while they keep doing so.
SHORTFALL_LOG_INTERVAL = 10.0


async def online_replicas(redis: Redis) -> int:
    """Replicas attached to the primary and in sync with it (INFO replication)."""
    info: dict[str, Any] = await redis.info("replication")
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


class Replication:
    """Which WAIT a batch of submits needs; `min_replicas` None means auto (see the module)."""

    def __init__(
        self, min_replicas: int | None, timeout: float, *, refresh_interval: float = REFRESH_INTERVAL
    ) -> None:
        self.min_replicas = min_replicas
        self.timeout = timeout
        self.refresh_interval = refresh_interval
        self._online: int | None = None
        self._checked_at = -math.inf
        self._look = asyncio.Lock()
        self._logged_at = -math.inf

    @property
    def timeout_ms(self) -> int:
        return max(1, int(self.timeout * 1000))  # WAIT's 0 would wait forever

    async def wanted(self, redis: Redis) -> int:
        """How many replicas the next batch must reach: 0 means no WAIT at all."""
        if self.min_replicas is not None:
            return self.min_replicas
        if time.monotonic() - self._checked_at >= self.refresh_interval:
            async with self._look:  # one look for every batch that finds the count stale
                if time.monotonic() - self._checked_at >= self.refresh_interval:
                    self._online = await self._count(redis)
                    self._checked_at = time.monotonic()
        return 1 if self._online else 0

    async def _count(self, redis: Redis) -> int:
        try:
            online = await online_replicas(redis)
        except ResponseError as exc:  # INFO refused (a restricted managed Redis): nothing to count
            logger.warning("cannot count Redis replicas (%s): submits do not wait for any", exc)
            return 0
        if online != self._online:
            logger.info("Redis primary has %d replicas online: submits wait for %d", online, min(1, online))
        return online

    def fell_short(self, acknowledged: int, wanted: int) -> None:
        """A WAIT returned fewer replicas than `wanted`: look at the replicas again before the next."""
        self._checked_at = -math.inf
        now = time.monotonic()
        if now - self._logged_at >= SHORTFALL_LOG_INTERVAL:
            self._logged_at = now
            logger.warning(
                "Redis: %d of %d replicas confirmed submits within %.2gs; they are answered 503 "
                "(the client sends them again with their Idempotency-Key)",
                acknowledged,
                wanted,
                self.timeout,
            )
