"""CORS: let pages on `CORS_ORIGINS` (exact origins) call the API; no other origin.

Preflights are answered by a middleware. The allow headers are added when a
response is prepared, so a stream (SSE), whose headers go out long before its
handler returns, gets them too.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from mailhub.web.middlewares import error_response

METHODS = "GET, POST, OPTIONS"
HEADERS = "Content-Type, Authorization, Idempotency-Key, Last-Event-ID"


def setup(app: web.Application, origins: tuple[str, ...]) -> None:
    allowed = frozenset(origins)

    def allowed_origin(request: web.BaseRequest) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin is not None and origin.lower() in allowed else None

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)  # same-origin and non-browser calls pass as usual
        if allowed_origin(request) is None:
            return error_response(
                403, "origin_not_allowed", "This origin may not call the API (see CORS_ORIGINS)."
            )
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": METHODS,
                "Access-Control-Allow-Headers": HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )

    async def allow(request: web.BaseRequest, response: web.StreamResponse) -> None:
        origin = allowed_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
            response.headers.add("Vary", "Origin")

    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(allow)
