"""The admin API: list, inspect, re-send and delete tasks, erase an address, the overview.

Every route here sits behind `admin_auth` (token, or open for development,
or absent). The store does the work (`store.index`, `store.admin`,
`store.overview`); these views validate, call one of them, and answer JSON.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from mailhub.errors import TaskNotFailed, TaskNotFound, ValidationFailed
from mailhub.settings import Settings
from mailhub.store import smtp_status
from mailhub.store.admin import Resend, TaskAdmin
from mailhub.store.alerts import alert_state
from mailhub.store.index import Cursor, TaskIndex
from mailhub.store.overview import overview
from mailhub.store.webhooks import delivery_state
from mailhub.web import admin_events, appkeys
from mailhub.web.admin_auth import API_PREFIX, EVENTS_PATH, PAGE_PATH, AdminAccess, Mode
from mailhub.web.admin_schemas import AddressPathSchema, BulkResendSchema, TaskListQuerySchema
from mailhub.web.views import read_json, validated

logger = logging.getLogger(__name__)

_list_query = TaskListQuerySchema()
_bulk_resend = BulkResendSchema()
_address_path = AddressPathSchema()


async def context(app: web.Application) -> AsyncIterator[None]:
    """The admin store objects (after the Redis context)."""
    redis = app[appkeys.REDIS]
    app[appkeys.TASK_INDEX] = TaskIndex(redis, message_id_domain=app[appkeys.STORE].message_id_domain)
    app[appkeys.TASK_ADMIN] = TaskAdmin(redis)
    yield


def setup(app: web.Application, access: AdminAccess, static_dir: Path) -> None:
    """Add the admin routes, unless the admin API is off."""
    app[appkeys.ADMIN_ACCESS] = access
    if access.mode is Mode.OFF:
        return
    app.cleanup_ctx.append(context)

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir / "admin.html")

    app.router.add_get(PAGE_PATH, page)
    app.router.add_get(API_PREFIX + "/overview", overview_view)
    app.router.add_get(API_PREFIX + "/tasks", list_tasks)
    app.router.add_post(API_PREFIX + "/tasks/resend", resend_failed)
    # Not `resend`: else its OPTIONS and 405 would also offer this path's GET and DELETE.
    one_task = API_PREFIX + "/tasks/{task_id:(?!resend$)[^{}/]+}"
    app.router.add_get(one_task, task_view)
    app.router.add_post(one_task + "/resend", resend_task)
    app.router.add_delete(one_task, delete_task)
    app.router.add_delete(API_PREFIX + "/recipients/{address}", erase_recipient)
    app.router.add_post(EVENTS_PATH + "/ticket", admin_events.event_ticket)
    app.router.add_get(EVENTS_PATH, admin_events.admin_events)


def _task_id(request: web.Request) -> str:
    try:
        return str(uuid.UUID(request.match_info["task_id"]))
    except ValueError:
        raise ValidationFailed(
            "Not a valid task id.", {"task_id": ["Not a valid task id (a UUID)."]}
        ) from None


def _not_found(task_id: str) -> TaskNotFound:
    return TaskNotFound(f"No task {task_id}: it never existed, expired or was deleted.")


async def list_tasks(request: web.Request) -> web.Response:
    """A page of tasks, newest first; `next_cursor` continues it."""
    query = validated(_list_query, dict(request.query))
    cursor = None
    if "cursor" in query:
        try:
            cursor = Cursor.parse(query["cursor"])
        except ValueError:
            raise ValidationFailed(
                "Some fields are invalid.", {"cursor": ["Not a cursor of this list."]}
            ) from None
    page = await request.app[appkeys.TASK_INDEX].page(
        limit=query["limit"], status=query.get("status"), address=query.get("to"), cursor=cursor
    )
    next_cursor = page.next_cursor.encode() if page.next_cursor else None
    return web.json_response({"tasks": page.tasks, "next_cursor": next_cursor})


async def task_view(request: web.Request) -> web.Response:
    """One task in full: its request, its result and its timeline."""
    task_id = _task_id(request)
    task = await request.app[appkeys.TASK_INDEX].task(task_id)
    if task is None:
        raise _not_found(task_id)
    return web.json_response(task)


async def resend_task(request: web.Request) -> web.Response:
    """Re-queue a failed task; answers its new result document."""
    task_id = _task_id(request)
    outcome = await request.app[appkeys.TASK_ADMIN].resend(task_id)
    if outcome is Resend.UNKNOWN:
        raise _not_found(task_id)
    if outcome is Resend.NOT_FAILED:
        raise TaskNotFailed(f"Task {task_id} has not failed: only a failed task can be re-sent.")
    document = await request.app[appkeys.STORE].result(task_id)
    return web.Response(text=document or "{}", content_type="application/json")


async def resend_failed(request: web.Request) -> web.Response:
    """Re-queue the tasks that failed since a time (all that are kept, without one)."""
    body = validated(_bulk_resend, await read_json(request))
    since = body["since"].timestamp() if "since" in body else 0.0
    outcome = await request.app[appkeys.TASK_ADMIN].resend_failed(since, body["limit"])
    return web.json_response({"requeued": outcome.requeued, "remaining": outcome.remaining})


async def delete_task(request: web.Request) -> web.Response:
    """Delete a task and every trace of it."""
    task_id = _task_id(request)
    if not await request.app[appkeys.TASK_ADMIN].delete(task_id):
        raise _not_found(task_id)
    return web.Response(status=204)


async def erase_recipient(request: web.Request) -> web.Response:
    """Delete every task to (or with Reply-To) an address: an erasure request."""
    address = validated(_address_path, dict(request.match_info))["address"]
    deleted = await request.app[appkeys.TASK_ADMIN].erase_address(address)
    return web.json_response({"deleted": deleted})


async def overview_view(request: web.Request) -> web.Response:
    """The queue, recent outcomes, the workers, and whether sending is paused and why."""
    redis = request.app[appkeys.REDIS]
    view = await overview(redis)
    status = await smtp_status.read(redis)
    view["sending"] = {
        "paused": bool(status and status.paused),
        "reason": status.reason if status else "",
        "checked_at": status.checked_at if status else None,
        "capture_mode": request.app[appkeys.SETTINGS].capture_mode,
    }
    view.update(await _notifications(redis, request.app[appkeys.SETTINGS]))
    return web.json_response(view)


async def _notifications(redis: Redis, settings: Settings) -> dict[str, Any]:
    """Webhook delivery (per URL) and the alert mails waiting, for the overview."""
    alerts = asdict(await alert_state(redis)) if settings.alert_email else None
    return {
        "webhooks": asdict(await delivery_state(redis, settings.webhook_urls)),
        "alerts": {"email": settings.alert_email, **alerts} if alerts else None,
    }
