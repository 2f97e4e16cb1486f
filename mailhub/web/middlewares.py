"""Turn every error into a JSON answer with a stable shape; never a traceback."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mailhub.errors import ApiError, ServiceUnavailable

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.document(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, _CODES.get(exc.status, "http_error"), exc.reason)
        if "Allow" in exc.headers:  # RFC 9110: a 405 lists the methods that would work
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (RedisConnectionError, RedisTimeoutError) as exc:
        logger.error("Redis unavailable while serving %s %s: %s", request.method, request.path, exc)
        unavailable = ServiceUnavailable("The queue is unavailable; try again shortly.")
        return web.json_response(unavailable.document(), status=unavailable.status)
    except Exception:
        logger.exception("unexpected error while serving %s %s", request.method, request.path)
        return error_response(500, "internal_error", "Something went wrong on our side.")
