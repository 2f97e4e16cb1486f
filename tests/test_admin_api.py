"""The admin API on the real server (run.py's runner), a real Valkey and the real
STARTTLS + AUTH SMTP server (or the capture server, whose inbox erasure must reach)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mailhub.delivery.capture import start_capture_server
from mailhub.errors import SettingsError
from mailhub.settings import load_settings
from mailhub.store import keys, smtp_status
from mailhub.store.addresses import address_digest
from mailhub.store.members import compact, member
from mailhub.store.outbox import Outbox
from mailhub.store.tasks import EmailRequest, TaskStore
from mailhub.web import admin_auth
from mailhub.web.streams import SSE_PATH
from tests.helpers import running_worker, wait_for_status
from tests.live_server import Live, serving
from tests.smtp_server import Fault
from tests.sse import SseReader

TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = "/api/v1/admin"
SUBMIT = "/api/v1/email/received"
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def live(settings) -> AsyncIterator[Live]:  # type: ignore[no-untyped-def]
    async with serving(replace(settings, admin_token=TOKEN)) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Admin:
    """Calls to one server, with the admin token (or `token=`)."""

    def __init__(self, session: aiohttp.ClientSession, live: Live, token: str | None = TOKEN) -> None:
        self.session, self.url = session, live.url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **options: Any
    ) -> tuple[int, Any]:
        headers = {**self.headers, **(headers or {})}
        async with self.session.request(method, self.url + path, headers=headers, **options) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def ok(self, method: str, path: str, **options: Any) -> Any:
        status, answer = await self.call(method, path, **options)
        assert status == 200, answer
        return answer

    async def submit(
        self, to: str = "user@example.com", subject: str = "Hello", key: str | None = None
    ) -> str:
        mail = {"to": to, "subject": subject, "body": "Hi {username}"}
        headers = {"Idempotency-Key": key} if key else {}
        return (await self.ok("POST", SUBMIT, json=mail, headers=headers))["task_id"]


@pytest.fixture
def admin(session, live) -> Admin:  # type: ignore[no-untyped-def]
    return Admin(session, live)


async def test_without_a_token_set_the_admin_api_does_not_exist(session, settings):
    async with serving(settings) as live:
        for path in (ADMIN + "/overview", ADMIN + "/tasks", ADMIN + "/nothing", "/admin"):
            status, answer = await Admin(session, live).call("GET", path)
            assert (status, answer["error"]["code"]) == (404, "not_found"), path
        status, _ = await Admin(session, live).call("DELETE", ADMIN + "/tasks/" + UNKNOWN)
        assert status == 404


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
async def test_a_missing_or_wrong_token_is_401(session, live, token):
    status, answer = await Admin(session, live, token).call("GET", ADMIN + "/overview")
    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    async with session.get(live.url + ADMIN + "/tasks") as response:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_tokens_are_compared_as_equal_length_digests_in_constant_time(session, live, monkeypatch):
    compared: list[tuple[int, int]] = []
    real = admin_auth.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(admin_auth, "compare_digest", spy)
    for token in ["x", TOKEN[:10], TOKEN + "y" * 500, TOKEN]:
        await Admin(session, live, token).call("GET", ADMIN + "/overview")
    # Whatever the length offered, hmac.compare_digest compares two SHA-256 digests.
    assert compared == [(32, 32)] * 4


async def test_capture_mode_on_loopback_is_open_but_not_to_other_origins(session, valkey):
    settings = replace(load_settings({}, env_file=None), redis_url=valkey.url)
    async with serving(settings) as live:
        assert (await Admin(session, live, None).call("GET", ADMIN + "/overview"))[0] == 200
        async with session.get(live.url + "/admin") as page:
            policy = page.headers["Content-Security-Policy"]  # the pages' policy: no inline script
            assert page.status == 200 and "default-src 'self'" in policy and "unsafe-inline" not in policy
        status, answer = await Admin(session, live, None).call(
            "DELETE", ADMIN + "/tasks/" + UNKNOWN, headers={"Origin": "https://evil.example"}
        )
        assert (status, answer["error"]["code"]) == (403, "origin_not_allowed")
    async with serving(replace(settings, host="0.0.0.0")) as live:
        assert (await Admin(session, live, None).call("GET", ADMIN + "/overview"))[0] == 404


def test_a_short_admin_token_stops_start_up_without_echoing_it():
    with pytest.raises(SettingsError) as refused:
        load_settings({"ADMIN_TOKEN": "hunter2"}, env_file=None)
    assert "ADMIN_TOKEN" in str(refused.value) and "hunter2" not in str(refused.value)


async def test_a_refused_mail_is_listed_failed_and_a_resend_delivers_it_with_the_same_message_id(
    admin, session, live, store, settings, smtp
):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    task_id = await admin.submit()
    async with running_worker(store, settings):
        await wait_for_status(store, task_id)
    page = await admin.ok("GET", ADMIN + "/tasks", params={"status": "failed"})
    [task] = page["tasks"]
    assert (task["task_id"], task["status"], task["subject"]) == (task_id, "failed", "Hello")
    assert "550 5.1.1 no such user" in task["detail"] and page["next_cursor"] is None
    resent = await admin.ok("POST", f"{ADMIN}/tasks/{task_id}/resend")
    assert (resent["status"], resent["event"], resent["attempts"], resent["seq"]) == (
        "pending",
        "requeued",
        0,
        4,
    )
    async with session.get(live.url + SSE_PATH, params={"task_id": task_id}) as response:
        events = SseReader(response)
        assert (await events.next()).doc["event"] == "requeued"  # type: ignore[union-attr]
        async with running_worker(store, settings):
            rest = await events.rest()
    assert [m.doc["event"] for m in rest] == ["attempt", "success"]
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.message["Message-ID"] == task["message_id"]
    detail = await admin.ok("GET", f"{ADMIN}/tasks/{task_id}")
    assert [t["event"] for t in detail["timeline"]] == [
        "queued",
        "attempt",
        "failed",
        "requeued",
        "attempt",
        "success",
    ]
    assert (detail["status"], detail["attempts"], detail["resends"]) == ("success", 1, 1)
    assert (await admin.ok("GET", ADMIN + "/tasks", params={"status": "failed"}))["tasks"] == []


async def test_resend_refuses_a_task_that_has_not_failed(admin, store, settings):
    pending = await admin.submit()
    status, answer = await admin.call("POST", f"{ADMIN}/tasks/{pending}/resend")
    assert (status, answer["error"]["code"]) == (409, "not_failed")
    async with running_worker(store, settings):
        await wait_for_status(store, pending)
    assert (await admin.call("POST", f"{ADMIN}/tasks/{pending}/resend"))[0] == 409
    assert (await admin.call("POST", f"{ADMIN}/tasks/{UNKNOWN}/resend"))[0] == 404
    assert (await admin.call("POST", f"{ADMIN}/tasks/nope/resend"))[0] == 422


async def test_bulk_resend_requeues_the_failures_since_a_time(admin, store, settings, smtp):
    smtp.handler.faults.extend([Fault.reply_rcpt("550 5.1.1 no such user")] * 3)
    failed = [await admin.submit() for _ in range(3)]
    async with running_worker(store, settings):
        for task_id in failed:
            await wait_for_status(store, task_id)
        answer = await admin.ok("POST", ADMIN + "/tasks/resend", json={"status": "failed", "limit": 2})
        assert answer == {"requeued": 2, "remaining": 1}
        answer = await admin.ok(
            "POST", ADMIN + "/tasks/resend", json={"status": "failed", "since": "2020-01-01T00:00:00Z"}
        )
        assert answer == {"requeued": 1, "remaining": 0}
        for task_id in failed:
            assert (await wait_for_status(store, task_id))["status"] == "success"
    for body in [
        {"status": "pending"},
        {"status": "failed", "since": "yesterday"},
        {"status": "failed", "limit": 0},
    ]:
        status, answer = await admin.call("POST", ADMIN + "/tasks/resend", json=body)
        assert (status, answer["error"]["code"]) == (422, "validation_failed"), body


async def test_the_list_filters_by_status_and_address_and_pages_with_a_cursor(admin, store, settings, smtp):
    smtp.handler.faults.extend([Fault.reply_rcpt("550 5.1.1 no such user")] * 2)
    refused = [await admin.submit("Kim@example.com") for _ in range(2)]
    async with running_worker(store, settings):
        for task_id in refused:
            await wait_for_status(store, task_id)
        delivered = [await admin.submit("kim@example.com") for _ in range(3)]
        for task_id in delivered:
            await wait_for_status(store, task_id)
    others = [await admin.submit("lee@example.com") for _ in range(4)]  # pending: no worker now

    async def listed(**query: Any) -> list[str]:
        return [t["task_id"] for t in (await admin.ok("GET", ADMIN + "/tasks", params=query))["tasks"]]

    assert set(await listed(status="failed")) == set(refused)
    assert set(await listed(to="KIM@example.com")) == set(refused + delivered)
    assert set(await listed(to="kim@example.com", status="success")) == set(delivered)
    assert set(await listed(status="pending")) == set(others)
    assert await listed(to="nobody@example.com") == []
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = await admin.ok("GET", ADMIN + "/tasks", params=query)
        seen += [t["task_id"] for t in page["tasks"]]
        pages, cursor = pages + 1, page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and sorted(seen) == sorted(refused + delivered + others)
    assert set(seen[:4]) == set(others)  # newest first
    for bad in [
        {"status": "lost"},
        {"limit": "0"},
        {"limit": "201"},
        {"cursor": "12:x"},
        {"to": "x"},
        {"page": "2"},
    ]:
        status, answer = await admin.call("GET", ADMIN + "/tasks", params=bad)
        assert (status, answer["error"]["code"]) == (422, "validation_failed"), bad


async def test_delete_makes_result_and_events_answer_404(admin, session, live, redis):
    task_id = await admin.submit()
    assert await redis.xlen(keys.QUEUE) == 1
    status, _ = await admin.call("DELETE", f"{ADMIN}/tasks/{task_id}")
    assert status == 204
    async with session.get(live.url + "/api/v1/email/result", params={"task_id": task_id}) as response:
        assert response.status == 404
    async with session.get(live.url + SSE_PATH, params={"task_id": task_id}) as response:
        assert response.status == 404
    assert (await admin.call("GET", f"{ADMIN}/tasks/{task_id}"))[0] == 404
    assert (await admin.call("DELETE", f"{ADMIN}/tasks/{task_id}"))[0] == 404
    assert await redis.xlen(keys.QUEUE) == 0
    assert (await admin.ok("GET", ADMIN + "/tasks"))["tasks"] == []


@contextlib.asynccontextmanager
async def capture_smtp(redis, valkey) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    """The capture SMTP server (what fills the dev inbox), and settings that send to it."""
    server = await start_capture_server(redis)
    port = server.sockets[0].getsockname()[1]
    try:
        yield settings_for_capture(valkey.url, port)
    finally:
        server.close()
        await server.wait_closed()


def settings_for_capture(redis_url: str, port: int) -> Any:
    base = load_settings({}, env_file=None)
    return replace(
        base,
        redis_url=redis_url,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_tls="none",
        allowed_recipients=("*",),
        api_keys=(),
        admin_token=TOKEN,
        rate_limit="off",
        retry_base_delay=0.02,
        webhook_urls=("http://127.0.0.1:9/nobody-listens",),
        webhook_secret="whsec_" + base64.b64encode(b"k" * 32).decode(),
    )


async def dump(redis) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Every key of Redis and everything in it, as text."""
    contents = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            value = await redis.smembers(key)
        contents[key] = json.dumps(value, ensure_ascii=False, default=str)
    return contents


async def test_erasing_an_address_removes_every_trace_of_it(session, redis, valkey):
    victim = "Victim@Example.com"
    async with capture_smtp(redis, valkey) as settings, serving(settings) as live:
        store = TaskStore.from_settings(redis, settings)  # announces outcomes for webhooks
        admin = Admin(session, live)
        delivered = [
            await admin.submit(victim, key="form-submission-1"),  # its Idempotency-Key record names the task
            await admin.submit(victim.lower()),
            await admin.submit("other@example.com"),
        ]
        replied = await store.accept(
            EmailRequest(
                to="owner@example.com", subject="Form", body="x", reply_to=victim.lower(), rendered=True
            )
        )
        async with running_worker(store, settings):
            for task_id in [*delivered, replied.task_id]:
                await wait_for_status(store, task_id)
        # The receiver is down: each outcome waits as a webhook delivery, the victim's address in it.
        assert await Outbox(redis).fan_out(settings.webhook_urls, alerts=False) == 4
        waiting = await admin.submit(victim)  # still queued: no worker now
        assert len(await redis.lrange(keys.INBOX, 0, -1)) == 4
        assert await admin.ok("DELETE", f"{ADMIN}/recipients/{victim.upper()}") == {"deleted": 4}
        erased = [delivered[0], delivered[1], replied.task_id, waiting]
        for task_id in erased:
            async with session.get(
                live.url + "/api/v1/email/result", params={"task_id": task_id}
            ) as response:
                assert response.status == 404
        everything = await dump(redis)
        traces = [victim.lower(), address_digest(victim), *erased]
        found = [(key, t) for key, text in everything.items() for t in traces if t in (key + text).lower()]
        # Sets and the queue name a task by its member, a hash its addresses' digests in base 85
        # (case matters in both).
        kept = [*map(member, erased), compact(address_digest(victim))]
        found += [(key, k) for key, text in everything.items() for k in kept if k in key + text]
        assert found == []
        assert delivered[2] in everything[keys.task(delivered[2])]  # the other mail is kept
        [kept] = await redis.lrange(keys.INBOX, 0, -1)
        assert "other@example.com" in kept
        assert await admin.ok("DELETE", f"{ADMIN}/recipients/{victim}") == {"deleted": 0}
        status, answer = await admin.call("DELETE", f"{ADMIN}/recipients/not-an-address")
        assert (status, answer["error"]["code"]) == (422, "validation_failed")


async def test_overview_shows_queue_outcomes_workers_and_a_paused_sending(
    admin, store, settings, smtp, redis
):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    async with running_worker(store, settings) as worker:
        done = [await admin.submit() for _ in range(3)]
        for task_id in done:
            await wait_for_status(store, task_id)
        view = await admin.ok("GET", ADMIN + "/overview")
        assert [w["name"] for w in view["workers"]] == [worker.name]
        assert view["workers"][0]["idle_seconds"] < 5
    waiting = [await admin.submit() for _ in range(2)]
    await smtp_status.record(redis, "worker-1", paused=True, reason="535 5.7.8 authentication failed")
    view = await admin.ok("GET", ADMIN + "/overview")
    assert view["tasks"]["last_hour"] == {"pending": 2, "success": 2, "failed": 1}
    assert view["queue"]["waiting"] == 2 and view["queue"]["pending"] == len(waiting)
    assert view["queue"]["oldest_pending_seconds"] is not None
    assert (sum(view["per_minute"]["success"]), sum(view["per_minute"]["failed"])) == (2, 1)
    assert view["sending"]["paused"] and "535 5.7.8" in view["sending"]["reason"]


async def test_the_openapi_document_has_the_admin_api_behind_the_bearer_scheme(admin):
    spec = await admin.ok("GET", "/openapi.json")
    assert spec["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    admin_paths = {path: ops for path, ops in spec["paths"].items() if path.startswith(ADMIN)}
    assert {ADMIN + "/tasks", ADMIN + "/tasks/{task_id}/resend", ADMIN + "/recipients/{address}"} <= set(
        admin_paths
    )
    for ops in admin_paths.values():
        for op in ops.values():
            assert op["tags"] == ["admin"] and op["security"] == [{"adminToken": []}]
