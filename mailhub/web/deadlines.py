"""How long a client may take to send a request.

A connection that trickles its request (one header line every few seconds:
slowloris) or sits idle holds a socket, and so a file descriptor, for free.
Two clocks bound that:

- aiohttp's `keepalive_timeout` (the `KEEPALIVE_TIMEOUT` setting, given to
  the runner): a connection is closed when it has not delivered a request's
  complete headers this long after it opened or after its last response.
  One timer serves as both the header deadline and the idle keep-alive
  (armed at connect since aiohttp 3.14.5; before, a connection that never
  sent a request stayed open).
- `body_deadline` (`BODY_TIMEOUT`): once the headers are in, the body must
  follow within this many seconds, or the answer is 408 and the connection
  closes.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from mailhub.errors import RequestTimeout


class _BodyTooSlow(TimeoutError):
    """Set on a request's body stream when its deadline passes.

    A TimeoutError, so that aiohttp's own lingering read of an unread body
    after the response treats it as the end of that read, not as a crash.
    """


def body_deadline(seconds: float) -> Middleware:
    """A middleware: a handler's read of the request body fails with 408 after `seconds`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = request.content
        if not request.body_exists or body.is_eof():
            return await handler(request)
        # The body is not read here: the handler reads it (or refuses the
        # request before reading it) as it would without a deadline.
        timer = asyncio.get_running_loop().call_later(seconds, body.set_exception, _BodyTooSlow())
        body.on_eof(timer.cancel)
        try:
            return await handler(request)
        except _BodyTooSlow:
            raise RequestTimeout(f"The request body did not arrive within {seconds:g} seconds.") from None
        finally:
            timer.cancel()

    return middleware
