"""The process's open SSE and WebSocket responses, so shutdown can end them."""

from __future__ import annotations

import weakref

from aiohttp import WSCloseCode, web
from aiohttp_sse import EventSourceResponse


class OpenStreams:
    """The process's open SSE and WebSocket responses, ended on shutdown.

    A stream that opens while shutdown is under way is ended as it registers;
    otherwise the server would wait for it until its shutdown timeout.
    """

    def __init__(self) -> None:
        self._streams: weakref.WeakSet[web.StreamResponse] = weakref.WeakSet()
        self._closing = False

    async def add(self, stream: web.StreamResponse) -> None:
        self._streams.add(stream)
        if self._closing:
            await _end(stream)

    async def close_all(self) -> None:
        self._closing = True
        for stream in list(self._streams):
            await _end(stream)


async def _end(stream: web.StreamResponse) -> None:
    if isinstance(stream, web.WebSocketResponse):
        await stream.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
    elif isinstance(stream, EventSourceResponse):
        stream.stop_streaming()
