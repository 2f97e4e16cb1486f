"""Is the Redis mailhub was given able to keep queued mail? Asked at start-up and by `run.py check`.

Three things, after BullMQ's start-up check:
- **version**: the commands mailhub runs exist (XAUTOCLAIM needs 6.2).
- **eviction**: with a `maxmemory-policy` other than `noeviction`, a Redis
  whose memory fills deletes keys, queued mail among them. mailhub refuses
  to start on one unless REDIS_ALLOW_EVICTION=1.
- **persistence**: without an append-only file, snapshots or replicas, a
  restart of Redis loses every queued mail. A warning: some run it so.

INFO answers all but the snapshot schedule, which needs CONFIG GET; managed
Redis services often disable CONFIG, and then that part is reported as
unknown rather than refused.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from mailhub.errors import UnsuitableRedis

logger = logging.getLogger(__name__)

#: Seconds the start-up check waits for Redis before starting unchecked.
STARTUP_TIMEOUT = 5.0
#: The oldest Redis with every command mailhub sends: XAUTOCLAIM (6.2),
#: SET ... KEEPTTL (6.0), XGROUP CREATE ... MKSTREAM (5.0).
MIN_VERSION = (6, 2, 0)


class Level(str, enum.Enum):
    OK = "ok"  #: as it should be
    WARN = "warn"  #: works, but a restart or failover may lose queued mail
    REFUSE = "refuse"  #: mailhub does not start on it


@dataclass(frozen=True)
class Finding:
    """One verdict about the Redis, in a line."""

    topic: str
    level: Level
    text: str


async def inspect(redis: Redis, *, allow_eviction: bool = False) -> list[Finding]:
    """What this Redis means for queued mail: version, eviction, persistence (in that order)."""
    info: dict[str, Any] = await redis.info()
    return [
        version_finding(info),
        await eviction_finding(redis, info, allow=allow_eviction),
        await _persistence(redis, info),
    ]


async def check_at_startup(redis: Redis, *, allow_eviction: bool) -> None:
    """Log what may lose mail; raise `UnsuitableRedis` (one line) for what must not be used.

    An unreachable Redis is only logged: mailhub starts, answers 503 until
    Redis is back, and is not checked then.
    """
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            findings = await inspect(redis, allow_eviction=allow_eviction)
    except (RedisError, OSError, TimeoutError) as exc:
        logger.warning("Redis could not be checked at start-up (%s); starting unchecked", exc or "timeout")
        return
    for finding in findings:
        if finding.level is Level.WARN:
            logger.warning("Redis: %s", finding.text)
        elif finding.level is Level.OK:
            logger.info("Redis: %s", finding.text)
    refused = [finding.text for finding in findings if finding.level is Level.REFUSE]
    if refused:
        raise UnsuitableRedis(refused[0])


def server_name(info: dict[str, Any]) -> str:
    """ "Valkey 9.1.2" or "Redis 7.4.1"."""
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info.get('redis_version', '?')}"


def version_finding(info: dict[str, Any]) -> Finding:
    """Refuses a server older than `MIN_VERSION` (Valkey reports the Redis version it matches)."""
    name = server_name(info)
    try:
        version = tuple(int(part) for part in str(info["redis_version"]).split(".")[:3])
    except (KeyError, ValueError):
        return Finding("version", Level.WARN, f"{name}: its version could not be read")
    if version < MIN_VERSION:
        needed = ".".join(map(str, MIN_VERSION[:2]))
        return Finding(
            "version",
            Level.REFUSE,
            f"{name} is too old: mailhub needs Redis {needed} or later (XAUTOCLAIM, "
            "which takes over the mail of a dead worker)",
        )
    return Finding("version", Level.OK, name)


async def eviction_finding(redis: Redis, info: dict[str, Any], *, allow: bool) -> Finding:
    """Refuses a policy that deletes keys when memory is full (unless `allow`); warns if unreadable."""
    policy = info.get("maxmemory_policy") or await _config(redis, "maxmemory-policy")
    if policy is None:
        return Finding(
            "eviction",
            Level.WARN,
            "maxmemory-policy could not be read (CONFIG is disabled here): make sure it is "
            "noeviction, or Redis may delete queued mail when its memory is full",
        )
    if policy == "noeviction":
        return Finding("eviction", Level.OK, "maxmemory-policy noeviction")
    text = (
        f"maxmemory-policy is {policy}: when its memory is full Redis deletes keys, queued mail "
        "among them; set maxmemory-policy noeviction"
    )
    if allow:
        return Finding("eviction", Level.WARN, text + " (started anyway: REDIS_ALLOW_EVICTION=1)")
    return Finding("eviction", Level.REFUSE, text + ", or REDIS_ALLOW_EVICTION=1 to start anyway")


async def _persistence(redis: Redis, info: dict[str, Any]) -> Finding:
    aof = str(info.get("aof_enabled", "0")) == "1"
    replicas = int(info.get("connected_slaves", 0) or 0)
    with_replicas = f"; {replicas} replica{'s' if replicas != 1 else ''}" if replicas else ""
    if aof:
        return Finding("persistence", Level.OK, "append-only file on" + with_replicas)
    save = await _config(redis, "save")
    if save:
        return Finding(
            "persistence",
            Level.OK,
            f"snapshots only (save {save}): a crash loses what was queued since the last one; "
            "appendonly yes keeps every mail" + with_replicas,
        )
    snapshots = "snapshots unknown (CONFIG is disabled)" if save is None else "no snapshots"
    kept = f"no append-only file, {snapshots}"
    if replicas:
        return Finding(
            "persistence",
            Level.WARN,
            f"{kept}: if the primary restarts before a replica takes over, it comes back empty "
            "and its replicas copy that; set appendonly yes" + with_replicas,
        )
    return Finding(
        "persistence",
        Level.WARN,
        f"{kept} and no replicas: a restart of Redis loses every queued mail; set appendonly yes",
    )


async def _config(redis: Redis, name: str) -> str | None:
    """A CONFIG GET value, or None where CONFIG is disabled or renamed."""
    try:
        answer = await redis.config_get(name)
    except ResponseError:
        return None
    return answer.get(name)
