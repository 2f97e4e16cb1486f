"""aiohttp's connection handler, made to answer its own errors the way mailhub does.

A request aiohttp cannot parse (a malformed request line, a bad header, a
header over the size limit) is answered by its connection handler before
any middleware or signal runs: as text/plain quoting the offending bytes,
with the `Server` banner. aiohttp offers no hook for that answer
(aiohttp#3287, #6463), so `Runner` serves the application through a
subclass of its handler whose `handle_error` answers in mailhub's JSON error
shape, echoes nothing the client sent, and carries the same bare headers as
every other response (`security_headers`).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web

from mailhub.web import security_headers

logger = logging.getLogger(__name__)

#: What each status aiohttp answers by itself says; nothing from the request.
_ERRORS = {
    400: ("bad_request", "The request is not valid HTTP."),
    500: ("internal_error", "Something went wrong on our side."),
    504: ("timeout", "The request took too long."),
}


class _BareResponse(web.Response):
    """A response sent without the application, so without its prepare signal."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()  # where aiohttp adds its banner
        security_headers.strip_and_mark(self)


class _RequestHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The JSON error for `status`; the cause goes to the log only."""
        if request.writer.output_size > 0:  # as aiohttp: a response is already under way
            raise ConnectionError("Response is sent already, cannot send another one")
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # One line, no traceback: scanners send such requests all day.
            logger.info("refused an unparsable request from %s: %.200s", request.remote, exc or message)
        code, text = _ERRORS.get(status, ("http_error", HTTPStatus(status).phrase))
        body = json.dumps({"error": {"code": code, "message": text}})
        response = _BareResponse(status=status, text=body, content_type="application/json")
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An `AppRunner` whose connections answer unparsable requests with JSON errors."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same state, another protocol class: aiohttp builds the Server itself
        # (with the app's handler, request factory and the runner's options).
        server.__class__ = _Server
        return server
