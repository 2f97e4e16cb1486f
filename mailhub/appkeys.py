"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

import weakref

from aiohttp import web
from redis.asyncio import Redis

from .events import EventHub
from .guard import SubmitGuard
from .settings import Settings
from .tasks import TaskStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", TaskStore)
GUARD = web.AppKey("guard", SubmitGuard)
EVENT_HUB = web.AppKey("event_hub", EventHub)
#: Open SSE and WebSocket responses, closed on shutdown.
STREAMS = web.AppKey("streams", weakref.WeakSet)
