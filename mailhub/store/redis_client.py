"""Redis clients configured the way mailhub needs them: the one place that makes them.

Every process (web, worker, the event hub, `run.py check`) gets its client
from `from_settings`: either one Redis at `REDIS_URL`, or the primary that
Sentinel names. A Sentinel-managed client asks the sentinels for the
primary's address whenever it opens a connection, and drops its connections
when that address changes, so after a failover each process follows the new
primary by itself: commands fail (a 503, a worker's back-off) until
Sentinel has promoted a replica, then work again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff

from mailhub.settings import Settings

#: Connections one process opens at most; more concurrent commands wait for one.
MAX_CONNECTIONS = 100
#: How long a command waits for a free connection before failing (as a 503).
POOL_TIMEOUT = 2.0
#: How long a sentinel may take to answer who the primary is.
SENTINEL_TIMEOUT = 0.5


def _options() -> dict[str, Any]:
    """Connection options shared by both kinds of client.

    `socket_timeout=None`: blocking stream reads wait as long as they asked to,
    and cancelling them is not lost in a timeout (redis-py 8 on Python 3.11).
    A blocking pool makes a burst of requests wait for a connection instead
    of failing with "Too many connections".
    """
    return dict(
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT,
        decode_responses=True,
        socket_timeout=None,
        socket_connect_timeout=0.5,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
        health_check_interval=15,
    )


def connect(url: str) -> Redis:
    """A client for `url` that fails fast when Redis is unreachable."""
    return Redis.from_pool(BlockingConnectionPool.from_url(url, **_options()))


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (connections to whichever server is primary) that waits for a free connection."""


class SentinelRedis(Redis):
    """A client of the primary Sentinel names; closing it closes the sentinel connections too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def connect_sentinel(
    sentinels: tuple[tuple[str, int], ...],
    master: str,
    *,
    sentinel_password: str = "",
    password: str = "",
) -> Redis:
    """A client of the primary the `sentinels` know as `master`, following it across failovers."""
    sentinel = Sentinel(
        list(sentinels),
        sentinel_kwargs={
            "password": sentinel_password or None,
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "decode_responses": True,
        },
    )
    client = sentinel.master_for(
        master,
        redis_class=SentinelRedis,
        connection_pool_class=_BlockingSentinelPool,
        password=password or None,
        **_options(),
    )
    client.sentinels = sentinel
    return client


def from_settings(settings: Settings) -> Redis:
    """The client every process uses: Sentinel's primary when sentinels are set, else REDIS_URL."""
    if settings.redis_sentinels:
        return connect_sentinel(
            settings.redis_sentinels,
            settings.redis_sentinel_master,
            sentinel_password=settings.redis_sentinel_password,
            password=settings.redis_password,
        )
    return connect(settings.redis_url)


def describe(settings: Settings) -> str:
    """Where the Redis is, for logs and `run.py check`, without a password."""
    if settings.redis_sentinels:
        where = ",".join(f"{host}:{port}" for host, port in settings.redis_sentinels)
        return f"primary {settings.redis_sentinel_master!r} of the sentinels {where}"
    return safe_url(settings.redis_url)


def safe_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
