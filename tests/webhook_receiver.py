"""A real webhook receiver for tests: an aiohttp server on 127.0.0.1 that verifies every
request with the `standardwebhooks` reference package and records it."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests.helpers import eventually

#: A valid secret (32 bytes) for tests.
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@dataclass
class Received:
    """One request as it arrived, and what it was answered."""

    headers: dict[str, str]
    body: bytes
    #: The JSON payload if the signature verified, else None.
    payload: dict[str, Any] | None
    #: Why verification failed ("" if it passed).
    refused: str
    answered: int

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def type(self) -> str:
        return (self.payload or {}).get("type", "")


@dataclass
class WebhookReceiver:
    """`async with WebhookReceiver() as receiver:` listens at `receiver.url` (path /hook).

    `answers` is a FIFO of status codes for the next requests (empty: 200);
    `delay` holds every answer that long. Requests with a bad signature are
    recorded with `refused` set and answered 400.
    """

    secret: str = SECRET
    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    #: Requests that arrived, answered or not yet.
    arrivals: int = 0

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrivals += 1
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            payload, refused = Webhook(self.secret).verify(body, headers), ""
        except WebhookVerificationError as exc:
            payload, refused = None, str(exc) or "refused"
        status = 400 if refused else (self.answers.pop(0) if self.answers else 200)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append(Received(headers, body, payload, refused, status))
        return web.Response(status=status)

    def of_type(self, kind: str) -> list[Received]:
        return [r for r in self.received if r.type == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
        """The verified requests of event type `kind`, once there are `count` of them."""
        await eventually(lambda: len(self.of_type(kind)) >= count, timeout=timeout, what=f"{count} {kind}")
        return self.of_type(kind)
