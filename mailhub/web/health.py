"""Operations endpoints: liveness (/healthz), readiness (/readyz), metrics (/metrics)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from mailhub import metrics
from mailhub.delivery import smtp_status
from mailhub.web import appkeys


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers and no worker reports SMTP sending paused."""
    settings = request.app[appkeys.SETTINGS]
    redis = request.app[appkeys.REDIS]
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(redis.ping(), timeout=1.0)
        checks["redis"] = "ok"
    except (TimeoutError, RedisError, OSError) as exc:
        checks["redis"] = f"unreachable: {exc or type(exc).__name__}"
        return _answer(checks, f"Redis is unreachable: {exc or type(exc).__name__}")
    if settings.capture_mode:
        checks["smtp"] = "capture mode: mail is not delivered"
        return _answer(checks)
    status = await smtp_status.read(redis)
    if status is None:
        checks["smtp"] = "not checked yet"
    elif status.paused:
        checks["smtp"] = f"paused: {status.reason}"
        return _answer(checks, f"SMTP sending is paused: {status.reason}")
    else:
        checks["smtp"] = f"ok (checked {status.checked_at})"
    return _answer(checks)


def _answer(checks: dict[str, str], problem: str | None = None) -> web.Response:
    if problem is None:
        return web.json_response({"status": "ready", "checks": checks})
    return web.json_response({"status": "unavailable", "reason": problem, "checks": checks}, status=503)


async def prometheus(request: web.Request) -> web.Response:
    """This process's metrics in Prometheus text format."""
    if appkeys.EVENT_HUB in request.app:  # a web process (a worker has no streams)
        metrics.SUBSCRIBERS.set(request.app[appkeys.EVENT_HUB].subscription_count)
    await metrics.refresh_queue_gauges(request.app[appkeys.REDIS])
    # The content type carries a version parameter, which `content_type=` would refuse.
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
