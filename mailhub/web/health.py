"""Operations endpoints: liveness (/healthz), readiness (/readyz), metrics (/metrics).

These answer anyone who can reach the port, so /readyz says only what is
wrong, in a few fixed words; why (a Redis address, an SMTP reply) goes to
the log, and to a caller holding `METRICS_TOKEN`. With `METRICS_TOKEN` set,
/metrics needs it too.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mailhub import metrics
from mailhub.errors import Unauthorized
from mailhub.settings import Settings
from mailhub.store import smtp_status
from mailhub.web import appkeys

logger = logging.getLogger(__name__)


@dataclass
class Readiness:
    """Public `checks` (fixed words), the `problem` if not ready, and the private `detail`."""

    checks: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    detail: dict[str, str] = field(default_factory=dict)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers and no worker reports SMTP sending paused."""
    ready = await check(request.app[appkeys.SETTINGS], request.app[appkeys.REDIS])
    document: dict[str, object] = {"status": "ready" if ready.problem is None else "unavailable"}
    if ready.problem is not None:
        document["reason"] = ready.problem
    document["checks"] = ready.checks
    if _holds_token(request):
        document["detail"] = ready.detail
    return web.json_response(document, status=200 if ready.problem is None else 503)


async def check(settings: Settings, redis: Redis) -> Readiness:
    """Ping Redis, then read what the workers last found about the SMTP login."""
    ready = Readiness()
    try:
        await asyncio.wait_for(redis.ping(), timeout=1.0)
    except (TimeoutError, RedisError, OSError) as exc:
        cause = str(exc) or type(exc).__name__
        logger.warning("readiness: Redis is unreachable: %s", cause)
        ready.checks["redis"], ready.detail["redis"] = "unreachable", cause
        ready.problem = "Redis is unreachable"
        return ready
    ready.checks["redis"] = "ok"
    if settings.capture_mode:
        ready.checks["smtp"] = "capture mode"
        return ready
    status = await smtp_status.read(redis)
    if status is None:
        ready.checks["smtp"] = "not checked yet"
        return ready
    ready.detail["smtp"] = f"checked {status.checked_at} by {status.worker}"
    if status.paused:
        # The worker logged why when it paused (SENDING PAUSED ...).
        ready.checks["smtp"], ready.problem = "paused", "SMTP sending is paused"
        ready.detail["smtp"] = f"{status.reason}; {ready.detail['smtp']}"
    else:
        ready.checks["smtp"] = "ok"
    return ready


async def prometheus(request: web.Request) -> web.Response:
    """This process's metrics in Prometheus text format (only with the token, when one is set)."""
    if request.app[appkeys.SETTINGS].metrics_token and not _holds_token(request):
        raise Unauthorized(
            "Send the metrics token: Authorization: Bearer <METRICS_TOKEN>.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if appkeys.EVENT_HUB in request.app:  # a web process (a worker has no streams)
        metrics.SUBSCRIBERS.set(request.app[appkeys.EVENT_HUB].subscription_count)
    await metrics.refresh_queue_gauges(request.app[appkeys.REDIS])
    # The content type carries a version parameter, which `content_type=` would refuse.
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _holds_token(request: web.Request) -> bool:
    """True if METRICS_TOKEN is set and the request carries it as a Bearer token."""
    token = request.app[appkeys.SETTINGS].metrics_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.encode())
    )
