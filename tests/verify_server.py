"""A real local CAPTCHA siteverify server (aiohttp, 127.0.0.1) answering like the providers.

Tokens starting with "good" pass once (a second use gets `timeout-or-duplicate`,
as Turnstile answers), "slow" never gets an answer in time, "broken" gets a 500,
anything else `invalid-input-response`. Every request's form is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from tests.helpers import free_port


class VerifyServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self._used: set[str] = set()
        self.url = ""

    async def siteverify(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.requests.append(form)
        token = form.get("response", "")
        if token == "slow":
            await asyncio.sleep(60)
        if token == "broken":
            return web.Response(status=500, text="oops")
        if token.startswith("good") and form.get("secret") == "test-secret":
            if token not in self._used:
                self._used.add(token)
                return web.json_response({"success": True, "error-codes": []})
            return web.json_response({"success": False, "error-codes": ["timeout-or-duplicate"]})
        return web.json_response({"success": False, "error-codes": ["invalid-input-response"]})


@asynccontextmanager
async def verify_server() -> AsyncIterator[VerifyServer]:
    server = VerifyServer()
    app = web.Application()
    app.router.add_post("/siteverify", server.siteverify)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}/siteverify"
    try:
        yield server
    finally:
        await runner.cleanup()
