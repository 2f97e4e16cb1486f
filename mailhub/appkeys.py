"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from .settings import Settings
from .tasks import TaskStore

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", TaskStore)
