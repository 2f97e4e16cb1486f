"""Redis clients configured the way mailhub needs them."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def connect(url: str) -> Redis:
    """A client for `url` that fails fast when Redis is unreachable.

    `socket_timeout=None`: blocking stream reads wait as long as they asked to,
    and cancelling them is not lost in a timeout (redis-py 8 on Python 3.11).
    """
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=0.5,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
        health_check_interval=15,
    )
