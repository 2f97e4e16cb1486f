"""Redis clients configured the way mailhub needs them."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

#: Connections one process opens at most; more concurrent commands wait for one.
MAX_CONNECTIONS = 100
#: How long a command waits for a free connection before failing (as a 503).
POOL_TIMEOUT = 2.0


def connect(url: str) -> Redis:
    """A client for `url` that fails fast when Redis is unreachable.

    `socket_timeout=None`: blocking stream reads wait as long as they asked to,
    and cancelling them is not lost in a timeout (redis-py 8 on Python 3.11).
    A blocking pool makes a burst of requests wait for a connection instead
    of failing with "Too many connections".
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=0.5,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
        health_check_interval=15,
    )
    return Redis.from_pool(pool)
