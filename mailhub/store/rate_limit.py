"""Per-client rate limits, counted in Redis and shared by every web process.

A `Quota` is one client's fixed windows; the enqueue script counts an
accepted submit in the same round trip that queues it, `RateCounter.count`
counts one refused before that. Over a window, the refusal is `RateLimited`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from limits import parse_many
from redis.asyncio import Redis

from mailhub.errors import RateLimited
from mailhub.store import keys, scripts

logger = logging.getLogger(__name__)


def rate_windows(rate_limit: str) -> tuple[tuple[int, int], ...]:
    """(amount, seconds) per window length of a RATE_LIMIT value; none for `off`."""
    limits = [] if rate_limit == "off" else parse_many(rate_limit)
    # One counter per window length: of two limits on the same length, the lower rules.
    amounts: dict[int, int] = {}
    for item in limits:
        seconds = item.get_expiry()
        amounts[seconds] = min(item.amount, amounts.get(seconds, item.amount))
    return tuple((amount, seconds) for seconds, amount in amounts.items())


@dataclass(frozen=True)
class Quota:
    """One client's rate limits, as the Lua scripts count them (`scripts.over_limit`).

    The enqueue script counts an accepted submit in the same round trip that
    queues it; `SubmitGuard.count` counts one refused before that.
    """

    client: str
    #: (amount, seconds) of each fixed window, in RATE_LIMIT's order.
    windows: tuple[tuple[int, int], ...]

    def counter_keys(self) -> list[str]:
        return [keys.rate_limit(seconds, self.client) for _, seconds in self.windows]

    def script_args(self) -> list[int]:
        return [number for window in self.windows for number in window]

    def refusal(self, retry_after: int, window: int) -> RateLimited:
        """The 429 for going over window number `window` (from 1)."""
        amount, seconds = self.windows[window - 1]
        logger.warning("rate limit %d per %d s reached by %s", amount, seconds, self.client)
        return RateLimited(
            f"Too many emails from your address; try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


class RateCounter:
    """Counts submits that never reach the enqueue script."""

    def __init__(self, redis: Redis) -> None:
        self._count = redis.register_script(scripts.source(scripts.COUNT_SUBMIT))

    async def count(self, quota: Quota) -> None:
        """Count one submit; `RateLimited` if over. One round trip, none without windows."""
        if not quota.windows:
            return
        retry_after, window = await self._count(keys=quota.counter_keys(), args=quota.script_args())
        if int(retry_after):
            raise quota.refusal(int(retry_after), int(window))
