"""Issue #12, acceptance 1, end to end: `python run.py` with ADMIN_TOKEN, WEBHOOK_URL and
WEBHOOK_SECRET, a real SMTP server that refuses a mail with 550, and a real webhook
receiver that verifies every signature with the `standardwebhooks` reference package."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import MAIL_JSON, RESULT, SUBMIT, smtp_env
from tests.processes import mailhub_serving
from tests.smtp_server import Fault, SmtpServer
from tests.webhook_receiver import SECRET, WebhookReceiver

TOKEN = "owner-token-0123456789abcdef"
ADMIN = "/api/v1/admin"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as running:
        yield running


class Client:
    """HTTP calls to one mailhub, with or without the admin token."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def call(
        self, method: str, path: str, *, token: str | None = TOKEN, **options: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.url + path, headers=headers, **options) as answer:
            text = await answer.text()
            return answer.status, json.loads(text) if text else None


async def test_acceptance_1_failed_listed_resent_delivered_deleted(
    tmp_path: Path, valkey: Any, redis: Any, smtp: SmtpServer, receiver: WebhookReceiver
) -> None:
    # `redis` flushes the shared Valkey: nothing another test left is delivered here.
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    env = smtp_env(
        smtp,
        REDIS_URL=valkey.url,
        ADMIN_TOKEN=TOKEN,
        WEBHOOK_URL=receiver.url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_RETRY_BASE_DELAY="0.5",
    )
    async with mailhub_serving(cwd=tmp_path, env=env) as server, aiohttp.ClientSession() as http:
        client = Client(http, server.url)
        status, queued = await client.call("POST", SUBMIT, token=None, json=MAIL_JSON)
        assert status == 200
        task_id = queued["task_id"]

        # The refusal: a signed email.failed (the receiver verified it, or it would not count).
        [failed] = await receiver.wait_for("email.failed")
        assert failed.payload is not None and failed.payload["data"]["task_id"] == task_id
        assert "550 5.1.1" in failed.payload["data"]["detail"]

        # The owner's list shows it; without the token, or with a wrong one: 401.
        status, listed = await client.call("GET", f"{ADMIN}/tasks", params={"status": "failed"})
        assert status == 200 and [t["task_id"] for t in listed["tasks"]] == [task_id]
        for token in (None, "wrong-token-0123456789abcdef"):
            status, refused = await client.call(
                "GET", f"{ADMIN}/tasks", token=token, params={"status": "failed"}
            )
            assert status == 401 and refused["error"]["code"] == "unauthorized"

        # The server accepts now; the receiver answers 500 once.
        receiver.answers.append(500)
        status, _ = await client.call("POST", f"{ADMIN}/tasks/{task_id}/resend")
        assert status == 200
        first, second = await receiver.wait_for("email.delivered", 2, timeout=20)
        assert (first.answered, second.answered) == (500, 200)
        assert first.id == second.id and second.payload is not None
        assert second.payload["data"]["task_id"] == task_id and second.payload["data"]["status"] == "success"
        status, result = await client.call("GET", RESULT, token=None, params={"task_id": task_id})
        assert (status, result["status"]) == (200, "success")
        [mail] = await smtp.handler.wait_for_count(1)
        assert task_id in mail.message["Message-ID"]

        # The overview shows the webhooks' state: two delivered, one attempt failed, none waiting.
        status, view = await client.call("GET", f"{ADMIN}/overview")
        hooks = view["webhooks"]
        assert (hooks["pending"], hooks["delivered"], hooks["failed_attempts"], hooks["dropped"]) == (
            0,
            2,
            1,
            0,
        )
        [endpoint] = hooks["endpoints"]
        assert (endpoint["url"], endpoint["last_error"], endpoint["last_status"]) == (
            receiver.url,
            "HTTP 500",
            "200",
        )
        assert view["alerts"] is None  # no ALERT_EMAIL

        # Deleted: the result is gone.
        status, _ = await client.call("DELETE", f"{ADMIN}/tasks/{task_id}")
        assert status == 204
        status, gone = await client.call("GET", RESULT, token=None, params={"task_id": task_id})
        assert status == 404 and gone["error"]["code"] == "not_found"
        status, _ = await client.call("DELETE", f"{ADMIN}/tasks/{task_id}", token=None)
        assert status == 401
    assert all(r.refused == "" for r in receiver.received)
