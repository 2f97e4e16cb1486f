"""The app served as run.py serves it: an AppRunner on a free port, no handler cancellation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from mailhub.live.hub import EventHub
from mailhub.settings import Settings
from mailhub.web import appkeys
from mailhub.web.app import create_runner
from tests.helpers import free_port


@dataclass
class Live:
    """A running app: its base URL, the app (for its keys) and its runner."""

    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def hub(self) -> EventHub:
        return self.app[appkeys.EVENT_HUB]


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Live]:
    """Serve the app with the production runner on 127.0.0.1 until the block ends."""
    runner = create_runner(settings)
    await runner.setup()
    app = runner.app
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Live(f"http://127.0.0.1:{port}", app, runner)
    finally:
        await runner.cleanup()
