"""What the server shows to anyone: public failure reasons, bare headers, JSON parse errors.

Through the production runner on a real port, a real Valkey and the real
STARTTLS + AUTH SMTP server; the malformed requests are raw bytes on a socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mailhub import reasons
from mailhub.settings import Settings
from mailhub.store import keys
from mailhub.web.security_headers import PAGE_POLICY
from tests.helpers import MAIL_JSON, SUBMIT, free_port, running_worker, wait_for_status
from tests.live_server import Live, serving
from tests.smtp_server import Fault
from tests.sse import SseReader

TOKEN = "metrics-secret-token"


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[Live]:
    async with serving(replace(settings, metrics_token=TOKEN)) as live:
        yield live


@pytest.fixture
async def http(site: Live) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(site.url) as session:
        yield session


async def submit(http: aiohttp.ClientSession) -> str:
    async with http.post(SUBMIT, json=MAIL_JSON) as response:
        assert response.status == 200
        return (await response.json())["task_id"]


async def follow(http: aiohttp.ClientSession, task_id: str, *, until: str) -> list[dict[str, Any]]:
    """The task's SSE documents up to and including the first with event `until`."""
    docs: list[dict[str, Any]] = []
    async with http.get("/api/v1/email/events", params={"task_id": task_id}) as response:
        reader = SseReader(response)
        while not docs or docs[-1]["event"] != until:
            message = await asyncio.wait_for(reader.next(), 10)
            assert message is not None, f"stream ended after {docs}"
            docs.append(message.doc)
    return docs


async def result(http: aiohttp.ClientSession, task_id: str) -> tuple[dict[str, Any], str]:
    async with http.get("/api/v1/email/result", params={"task_id": task_id}) as response:
        text = await response.text()
        return json.loads(text), text


async def test_a_refused_mail_shows_the_public_reason_and_keeps_the_reply_for_the_owner(
    http, store, redis, settings, smtp, caplog
):
    caplog.set_level(logging.INFO, logger="mailhub")
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    task_id = await submit(http)
    async with running_worker(store, settings):
        streamed = await follow(http, task_id, until="failed")
    document, raw = await result(http, task_id)
    assert (document["status"], document["reason"]) == ("failed", reasons.REFUSED)
    assert streamed[-1]["reason"] == reasons.REFUSED
    for shown in [raw, *map(json.dumps, streamed)]:
        # The reply itself: a task id or the milliseconds of a time may hold "550".
        assert "550 5.1.1" not in shown and "no such user" not in shown
    detail = await redis.hget(keys.task(task_id), "detail")
    assert detail == "failed after 1 attempt: recipient refused: 550 5.1.1 no such user"
    [line] = [r.getMessage() for r in caplog.records if task_id in r.getMessage() and "550" in r.getMessage()]
    assert "550 5.1.1 no such user" in line


async def test_a_retry_shows_temporary_failure_without_the_reply(http, store, redis, settings, smtp):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 greylisted, come back from 10.1.2.3"))
    task_id = await submit(http)
    async with running_worker(store, settings):
        streamed = await follow(http, task_id, until="success")
    [retry] = [d for d in streamed if d["event"] == "retry"]
    assert retry["last_error"] == reasons.TEMPORARY
    assert not any("451 4.7.1" in json.dumps(d) or "10.1.2.3" in json.dumps(d) for d in streamed)
    assert "10.1.2.3" in await redis.hget(keys.task(task_id), "detail")


async def test_a_refused_login_shows_sending_is_paused_without_the_535(
    http, store, redis, settings, smtp, caplog
):
    caplog.set_level(logging.INFO, logger="mailhub")
    smtp.password = "changed-by-the-provider"
    task_id = await submit(http)
    async with running_worker(store, settings, smtp_recheck_interval=0.05):
        streamed = await follow(http, task_id, until="retry")
        document, raw = await result(http, task_id)
        async with http.get("/readyz") as public:
            ready_public = await public.text()
        async with http.get("/readyz", headers={"Authorization": f"Bearer {TOKEN}"}) as owner:
            ready_owner = await owner.json()
        smtp.password = settings.smtp_pass
        assert (await wait_for_status(store, task_id))["status"] == "success"
    assert (document["event"], document["last_error"]) == ("retry", reasons.PAUSED)
    assert streamed[-1]["last_error"] == "sending is paused"
    for shown in (raw, json.dumps(streamed), ready_public):
        assert "535 5.7.8" not in shown and "login" not in shown.lower()
    assert (public.status, json.loads(ready_public)["checks"]["smtp"]) == (503, "paused")
    assert "535" in ready_owner["detail"]["smtp"]
    assert "535" in (await redis.hget(keys.task(task_id), "detail"))
    assert any(task_id in r.getMessage() and "535" in r.getMessage() for r in caplog.records)


async def test_readyz_with_redis_down_names_no_address(settings, caplog):
    port = free_port()  # nothing listens there
    down = replace(settings, redis_url=f"redis://127.0.0.1:{port}/0", metrics_token=TOKEN)
    async with serving(down) as live, aiohttp.ClientSession(live.url) as http:
        async with http.get("/readyz") as response:
            status, public = response.status, await response.text()
        async with http.get("/readyz", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            owner = await response.json()
    assert status == 503
    assert json.loads(public) == {
        "status": "unavailable",
        "reason": "Redis is unreachable",
        "checks": {"redis": "unreachable"},
    }
    assert str(port) in owner["detail"]["redis"]
    assert any(str(port) in r.getMessage() for r in caplog.records if r.name == "mailhub.web.health")


async def test_metrics_needs_the_token_when_one_is_set(http):
    async with http.get("/metrics") as refused:
        assert refused.status == 401
        assert (await refused.json())["error"]["code"] == "unauthorized"
    async with http.get("/metrics", headers={"Authorization": "Bearer wrong"}) as wrong:
        assert wrong.status == 401
    async with http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as scraped:
        assert scraped.status == 200
        assert "mailhub_delivery_failures_total" in await scraped.text()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/static/style.css", 200),
        ("GET", "/docs/static/swagger-ui.css", 200),
        ("GET", "/", 200),
        ("GET", "/api/v1/email/result?task_id=nope", 422),
        ("DELETE", SUBMIT, 405),
        ("GET", "/no/such/page", 404),
        ("GET", "/static/no-such-file.css", 404),
        ("GET", "/metrics", 401),
    ],
)
async def test_no_response_names_the_server_and_every_one_is_nosniff(http, method, path, status):
    async with http.request(method, path) as response:
        assert response.status == status
        assert "Server" not in response.headers
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/docs"])
async def test_html_pages_carry_the_page_policy(http, path):
    async with http.get(path) as response:
        assert response.content_type == "text/html"
        assert response.headers["Content-Security-Policy"] == PAGE_POLICY
        assert "frame-ancestors 'none'" in PAGE_POLICY and "script-src" not in PAGE_POLICY
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_dev_inbox_carries_the_page_policy(settings):
    async with (
        serving(replace(settings, smtp_host="")) as live,
        aiohttp.ClientSession(live.url) as http,
    ):
        async with http.get("/dev/inbox") as page, http.get("/dev/inbox/messages") as data:
            assert page.headers["Content-Security-Policy"] == PAGE_POLICY
            assert page.headers["X-Frame-Options"] == "DENY"
            assert "Content-Security-Policy" not in data.headers  # JSON: nosniff is enough
            assert data.headers["X-Content-Type-Options"] == "nosniff"


MARKER = "secret-marker-7f3a"


@pytest.mark.parametrize(
    "request_bytes",
    [
        f"<script>{MARKER}</script> / HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /{MARKER} HTTP/1.1 junk\r\nHost: x\r\n\r\n".encode(),
        f"GET / HTTP/1.1\r\nHost: x\r\nX-{MARKER}\x01: {MARKER}\r\n\r\n".encode(),
        f"GET / HTTP/1.1\r\nHost: x\r\nX-Big: {MARKER * 1000}\r\n\r\n".encode(),
        f"GET /{MARKER * 1000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {MARKER}\r\n\r\n".encode(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARKER.encode() + b"\r\n\r\n",
    ],
    ids=["request line", "version", "header byte", "huge header", "huge target", "length", "tls"],
)
async def test_an_unparsable_request_gets_the_json_error_without_its_bytes(site, request_bytes):
    reader, writer = await asyncio.open_connection("127.0.0.1", int(site.url.rsplit(":", 1)[1]))
    try:
        writer.write(request_bytes)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)  # the server closes after the answer
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    assert status_line.startswith("HTTP/1.") and status_line.split()[1] == "400"
    assert headers["content-type"].startswith("application/json")
    assert "server" not in headers
    assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert MARKER.encode() not in raw
