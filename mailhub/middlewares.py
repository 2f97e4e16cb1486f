"""Turn every error into a JSON answer with a stable shape; never a traceback."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ApiError

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
        return error_response(503, "unavailable", "The queue is unavailable; try again shortly.")
    except Exception:
        logger.exception("unexpected error while serving %s %s", request.method, request.path)
        return error_response(500, "internal_error", "Something went wrong on our side.")


CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Content-Type, Authorization, Idempotency-Key, Last-Event-ID"


def cors(origins: tuple[str, ...]) -> Handler:
    """Let pages on `origins` (exact matches) call the API; nothing else cross-origin."""
    allowed = frozenset(origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        preflight = (request.method == "OPTIONS"
                     and "Access-Control-Request-Method" in request.headers)
        if origin.lower() not in allowed:
            if preflight:
                return error_response(403, "origin_not_allowed",
                                      "This origin may not call the API (see CORS_ORIGINS).")
            return await handler(request)  # same-origin and non-browser calls pass as usual
        if preflight:
            response: web.StreamResponse = web.Response(status=204, headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": "600",
            })
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        response.headers.add("Vary", "Origin")
        return response

    return middleware  # type: ignore[return-value]
