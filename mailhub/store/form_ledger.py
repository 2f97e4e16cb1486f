"""What the forms remember in Redis: CAPTCHA tokens already used, confirmations sent per address."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from mailhub.store import keys

#: A used token is remembered this long: longer than any provider keeps one valid (Turnstile: 300 s).
TOKEN_MEMORY = 15 * 60
#: Confirmations to one address are counted over this many seconds from the first.
CONFIRMATION_WINDOW = 24 * 3600


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class FormLedger:
    """Marks CAPTCHA tokens used and counts confirmations; takes a Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def claim_token(self, provider: str, token: str) -> bool:
        """Mark a token used; False if it already was (a replay)."""
        return bool(
            await self.redis.set(
                keys.captcha_token(_digest(f"{provider}:{token}")), 1, nx=True, ex=TOKEN_MEMORY
            )
        )

    async def release_token(self, provider: str, token: str) -> None:
        """Forget a token that could not be verified at all, so the visitor can try it again."""
        await self.redis.delete(keys.captcha_token(_digest(f"{provider}:{token}")))

    async def count_confirmation(self, address: str, limit: int) -> bool:
        """Count one confirmation to `address`; False (and not counted further) over `limit` a day."""
        key = keys.confirmations(_digest(address.strip().lower()))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, CONFIRMATION_WINDOW, nx=True)
            count, _ = await pipe.execute()
        return int(count) <= limit
