"""The admin event stream (SSE) on the real server: tickets, every transition of every
task, deletions, resyncs, and one pub/sub connection however many dashboards watch."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from mailhub.web.admin_auth import AdminAccess
from mailhub.web.streams import SSE_PATH
from tests.helpers import MAIL_JSON, SUBMIT, eventually, running_worker
from tests.live_server import Live, serving
from tests.sse import SseMessage, SseReader

TOKEN = "test-admin-token-0123456789abcdef"
EVENTS = "/api/v1/admin/events"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def live(settings) -> AsyncIterator[Live]:  # type: ignore[no-untyped-def]
    async with serving(replace(settings, admin_token=TOKEN)) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


async def ticket(session: aiohttp.ClientSession, live: Live) -> str:
    async with session.post(live.url + EVENTS + "/ticket", headers=BEARER) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["expires_in"] == 60
    return answer["ticket"]


@contextlib.asynccontextmanager
async def admin_stream(session: aiohttp.ClientSession, live: Live) -> AsyncIterator[SseReader]:
    """The admin event stream, opened with a ticket as the dashboard opens it, once `ready`."""
    params = {"ticket": await ticket(session, live)}
    async with session.get(live.url + EVENTS, params=params) as response:
        assert response.status == 200, await response.text()
        events = SseReader(response)
        assert (await events.next()) == SseMessage(None, "{}", "ready")
        yield events


async def submit(session: aiohttp.ClientSession, live: Live) -> str:
    async with session.post(live.url + SUBMIT, json=MAIL_JSON) as response:
        return (await response.json())["task_id"]


async def test_every_transition_of_every_task_and_each_deletion_arrive_in_order(
    session, live, store, settings
):
    async with admin_stream(session, live) as events:
        first, second = await submit(session, live), await submit(session, live)
        async with running_worker(store, settings):
            seen = [await events.next() for _ in range(6)]
        docs = [message.doc for message in seen if message]
        for task_id in (first, second):
            assert [d["event"] for d in docs if d["task_id"] == task_id] == ["queued", "attempt", "success"]
        async with session.delete(f"{live.url}/api/v1/admin/tasks/{first}", headers=BEARER) as response:
            assert response.status == 204
        deleted = await events.next()
        assert deleted is not None and deleted.event == "deleted"
        assert (deleted.doc["task_id"], deleted.doc["event"]) == (first, "deleted")


async def test_the_stream_needs_a_valid_ticket_or_the_token(session, live, settings):
    access = AdminAccess(replace(settings, admin_token=TOKEN))
    expired = access.issue_ticket(now=0)
    forged = access.issue_ticket().split(".")[0] + ".AAAA"
    for params in [{}, {"ticket": "nonsense"}, {"ticket": expired}, {"ticket": forged}]:
        async with session.get(live.url + EVENTS, params=params) as response:
            assert response.status == 401, params
    async with session.post(live.url + EVENTS + "/ticket") as response:
        assert response.status == 401
    async with session.get(live.url + EVENTS, headers=BEARER) as response:
        assert response.status == 200
        assert (await SseReader(response).next()) == SseMessage(None, "{}", "ready")


async def test_a_ticket_from_another_token_is_refused(session, live, settings):
    other = AdminAccess(replace(settings, admin_token="another-admin-token-0123456789")).issue_ticket()
    async with session.get(live.url + EVENTS, params={"ticket": other}) as response:
        assert response.status == 401


async def test_dashboards_share_the_process_s_one_pubsub_connection(session, live, redis):
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(5):
            await stack.enter_async_context(admin_stream(session, live))
        task_id = await submit(session, live)
        follower = await stack.enter_async_context(
            session.get(live.url + SSE_PATH, params={"task_id": task_id})
        )
        assert follower.status == 200
        assert len(await redis.client_list(_type="pubsub")) == 1


async def test_a_deleted_task_s_followers_are_let_go(session, live):
    task_id = await submit(session, live)
    async with session.get(live.url + SSE_PATH, params={"task_id": task_id}) as follower:
        events = SseReader(follower)
        assert (await events.next()).doc["event"] == "queued"  # type: ignore[union-attr]
        async with session.delete(f"{live.url}/api/v1/admin/tasks/{task_id}", headers=BEARER) as response:
            assert response.status == 204
        assert await events.rest() == []  # the stream ends; a reconnect would get 404
    await eventually(lambda: live.hub.subscription_count == 0, what="the follower's subscription closed")


async def test_a_lost_pubsub_connection_tells_dashboards_to_resync(session, live, redis):
    async with admin_stream(session, live) as events:
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        resync = await events.next()
        assert resync is not None and resync.event == "resync"
        task_id = await submit(session, live)
        queued = await events.next()
        assert queued is not None and queued.doc["task_id"] == task_id
