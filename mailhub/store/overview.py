"""The owner's overview: the queue, recent outcomes, the workers; read in a few round trips.

Counts come from the task index (`store.index`): a task counts under the
status it is in now, at the time it entered it. A failed mail that was
re-sent and delivered counts as delivered, at its delivery.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from mailhub.clock import iso
from mailhub.store import keys
from mailhub.store.index import STATUSES
from mailhub.store.queue import WorkQueue

#: Minutes of the per-minute chart.
CHART_MINUTES = 60
_WINDOWS = {"last_hour": 3600_000, "last_day": 86400_000}


async def overview(redis: Redis) -> dict[str, Any]:
    """Queue depth, oldest pending task, waiting retries, outcomes in the last hour and
    day, delivered and failed per minute for the last hour, and the workers."""
    now = _ms(await redis.time())
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.QUEUE)
        pipe.zcard(keys.RETRIES)
        pipe.zrange(keys.RETRIES, 0, 0, withscores=True)
        pipe.zrange(keys.status_index("pending"), 0, 0, withscores=True)
        for status in STATUSES:
            pipe.zcard(keys.status_index(status))
            for span in _WINDOWS.values():
                pipe.zcount(keys.status_index(status), now - span, "+inf")
        chart_start = now - now % 60_000 - (CHART_MINUTES - 1) * 60_000
        for status in ("success", "failed"):
            for minute in range(CHART_MINUTES):
                start = chart_start + minute * 60_000
                pipe.zcount(keys.status_index(status), start, f"({start + 60_000}")
        replies = await pipe.execute()
    queued, retries, next_retry, oldest = replies[:4]
    counts = iter(replies[4 : 4 + len(STATUSES) * (1 + len(_WINDOWS))])
    totals: dict[str, int] = {}
    recent: dict[str, dict[str, int]] = {window: {} for window in _WINDOWS}
    for status in STATUSES:
        totals[status] = next(counts)
        for window in _WINDOWS:
            recent[window][status] = next(counts)
    chart = replies[4 + len(STATUSES) * (1 + len(_WINDOWS)) :]
    in_flight, workers = await _workers(redis)
    return {
        "now": _iso(now),
        "queue": {
            "waiting": max(0, queued - in_flight),
            "in_flight": in_flight,
            "retries_waiting": retries,
            "next_retry_at": _iso(next_retry[0][1]) if next_retry else None,
            "pending": totals["pending"],
            "oldest_pending_seconds": round((now - oldest[0][1]) / 1000, 1) if oldest else None,
        },
        "tasks": {"total": totals, **recent},
        "per_minute": {
            "start": _iso(chart_start),
            "success": chart[:CHART_MINUTES],
            "failed": chart[CHART_MINUTES:],
        },
        "workers": workers,
    }


async def _workers(redis: Redis) -> tuple[int, list[dict[str, Any]]]:
    """Sends in flight, and each consumer of the workers' group: what it holds, how long quiet."""
    consumers = await WorkQueue(redis).consumers()
    workers = [{"name": c.name, "holding": c.pending, "idle_seconds": round(c.idle, 1)} for c in consumers]
    return sum(c.pending for c in consumers), sorted(workers, key=lambda w: w["idle_seconds"])


def _ms(clock: tuple[int, int]) -> int:
    seconds, micros = clock
    return int(seconds) * 1000 + int(micros) // 1000


def _iso(ms: float) -> str:
    return iso(datetime.fromtimestamp(ms / 1000, UTC))
