"""A forms-only deployment as a real `python run.py`: the issue's FORMS_FILE, real SMTP, no allowlist."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp

from tests.helpers import smtp_env
from tests.processes import MailhubProcess
from tests.verify_server import verify_server

EXAMPLE = Path(__file__).parent / "fixtures" / "forms-example.toml"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
#: Values a visitor might type to break out: all must arrive as typed.
TYPED = {
    "name": "Kim {email} {{x}} <script>",
    "email": "kim@example.org",
    "message": "Hi {name} {username}\n{{x}} <script>alert(1)</script>",
}
#: Recipients a visitor might add: all ignored.
EXTRA = {"to": "victim@example.net", "cc": "victim@example.net", "bcc": "victim@example.net"}


async def _until_final(session: aiohttp.ClientSession, url: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(url) as response:
            document = await response.json()
        if document["status"] != "pending":
            return document
        assert time.monotonic() < deadline, document
        await asyncio.sleep(0.05)


async def test_forms_only_deployment(tmp_path, valkey, redis, smtp):
    shutil.copy(EXAMPLE, tmp_path / "forms.toml")
    async with verify_server() as verify:
        env = smtp_env(
            smtp,
            REDIS_URL=valkey.url,
            MAIL_FROM="Example <noreply@example.com>",
            ALLOWED_RECIPIENTS="",  # forms only: the contract endpoint refuses every recipient
            FORMS_FILE="forms.toml",
            TURNSTILE_SECRET="test-secret",
            CAPTCHA_VERIFY_URL=verify.url,
        )
        with MailhubProcess(cwd=tmp_path, env=env) as server:
            form = f"{server.url}/api/v1/forms/contact"
            async with aiohttp.ClientSession() as session:
                plain = {**TYPED, **EXTRA, "cf-turnstile-response": "good-1"}
                async with session.post(form, data=plain, headers=BROWSER, allow_redirects=False) as r:
                    assert r.status == 303
                    assert r.headers["Location"] == "https://www.example.com/thanks"
                multipart = aiohttp.FormData({**TYPED, **EXTRA, "cf-turnstile-response": "good-2"})
                multipart.add_field("extra", "x", content_type="text/plain")  # forces multipart
                async with session.post(form, data=multipart, headers=BROWSER, allow_redirects=False) as r:
                    assert r.status == 303
                    assert r.headers["Location"] == "https://www.example.com/thanks"
                async with session.post(form, json={**TYPED, "cf-turnstile-response": "good-3"}) as r:
                    assert r.status == 200
                    answer = await r.json()
                assert answer["status"] == "queued"
                document = await _until_final(session, server.url + answer["result_url"])
                assert document["status"] == "success"
                for token in (None, "bad"):
                    posted = TYPED if token is None else {**TYPED, "cf-turnstile-response": token}
                    async with session.post(form, json=posted) as r:
                        assert r.status == 403
                contract = {"to": "owner@example.com", "subject": "s", "body": "b"}
                async with session.post(f"{server.url}/api/v1/email/received", json=contract) as r:
                    assert r.status == 403
            mails = await smtp.handler.wait_for_count(3)
            assert server.stop() == 0
    # The refused posts queued nothing: three tasks in all, so three mails at most.
    assert len(await redis.keys("mailhub:task:*")) == 3
    assert len(smtp.handler.messages) == 3
    for mail in mails:
        assert mail.rcpt_tos == ["owner@example.com"]
        assert mail.message["To"] == "owner@example.com"
        assert mail.message["Reply-To"] == "kim@example.org"
        assert mail.message["Subject"] == "Contact: Kim {email} {{x}} <script>"
        assert mail.message["Cc"] is None and mail.message["Bcc"] is None
        assert b"victim" not in mail.data
        body = mail.message.get_content().replace("\r\n", "\n")
        assert body == (
            "From Kim {email} {{x}} <script> <kim@example.org>:\n\n"
            "Hi {name} {username}\n{{x}} <script>alert(1)</script>\n"
        )
