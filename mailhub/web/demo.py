"""What the bundled demo form at / needs to know about this server."""

from __future__ import annotations

from aiohttp import web

from mailhub.web import appkeys

DEMO_CONFIG_PATH = "/api/v1/demo-config"


async def demo_config(request: web.Request) -> web.Response:
    """The form's default recipient, and the dev inbox when mail is only captured."""
    settings = request.app[appkeys.SETTINGS]
    return web.json_response(
        {
            "recipient": settings.demo_recipient,
            "inbox_url": "/dev/inbox" if settings.capture_mode else None,
        }
    )
