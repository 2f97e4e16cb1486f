"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from mailhub.forms.intake import FormIntake
from mailhub.live.hub import EventHub
from mailhub.settings import Settings
from mailhub.store.admin import TaskAdmin
from mailhub.store.index import TaskIndex
from mailhub.store.tasks import TaskStore
from mailhub.web.admin_auth import AdminAccess
from mailhub.web.admission import StreamSlots
from mailhub.web.guard import SubmitGuard
from mailhub.web.locales import Locales
from mailhub.web.open_streams import OpenStreams

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", TaskStore)
GUARD = web.AppKey("guard", SubmitGuard)
FORMS = web.AppKey("forms", FormIntake)
LOCALES = web.AppKey("locales", Locales)
EVENT_HUB = web.AppKey("event_hub", EventHub)
ADMIN_ACCESS = web.AppKey("admin_access", AdminAccess)
TASK_INDEX = web.AppKey("task_index", TaskIndex)
TASK_ADMIN = web.AppKey("task_admin", TaskAdmin)
#: Open SSE and WebSocket responses, closed on shutdown.
STREAMS: web.AppKey[OpenStreams] = web.AppKey("streams")
#: Each client's open streams in this process, against MAX_STREAMS_PER_CLIENT.
STREAM_SLOTS = web.AppKey("stream_slots", StreamSlots)
