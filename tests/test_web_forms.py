"""POST /api/v1/forms/{id}: every kind of post, the plain-page answers and the JSON ones."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mailhub.forms.definitions import capture_contact_form
from mailhub.store import keys
from mailhub.web.app import create_app
from tests.helpers import result_of

FORM = "/api/v1/forms/contact"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
GOOD = {"name": "Kim", "email": "kim@example.org", "message": "Hello\nthere"}


@pytest.fixture
def form_settings(settings):
    contact = capture_contact_form("owner@example.com")
    return replace(settings, forms={"contact": contact}, allowed_recipients=())


@pytest.fixture
async def form_client(aiohttp_client: Any, form_settings):
    return await aiohttp_client(create_app(form_settings))


async def test_json_post_gets_the_contract_answer_and_ends_success(form_client, store, drain, smtp):
    response = await form_client.post(FORM, json=GOOD)
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "queued"
    assert uuid.UUID(answer["task_id"])
    assert answer["result_url"] == f"/api/v1/email/result?task_id={answer['task_id']}"
    await drain()
    document = await result_of(store, answer["task_id"])
    assert document["status"] == "success"
    assert document["to"] == "…@example.com"  # the owner's address is not the visitor's to see
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.rcpt_tos == ["owner@example.com"]
    assert mail.message["Reply-To"] == "kim@example.org"
    assert mail.message["Subject"] == "Contact: Kim"
    assert mail.message["From"].addresses[0].display_name == "Kim via mailhub"
    assert mail.message["From"].addresses[0].addr_spec == "noreply@example.com"
    assert body_of(mail) == "From Kim <kim@example.org>:\n\nHello\nthere\n"


async def test_plain_post_gets_303_to_the_thank_you_page(form_client, store, drain):
    response = await form_client.post(FORM, data=GOOD, headers=BROWSER, allow_redirects=False)
    assert response.status == 303
    location = response.headers["Location"]
    task_id = re.fullmatch(r"/forms/thanks\?task_id=([0-9a-f-]+)", location).group(1)
    await drain()
    assert (await result_of(store, task_id))["status"] == "success"
    page = await form_client.get(location, headers={"Accept-Language": "ko-KR,ko;q=0.9"})
    assert page.status == 200
    text = await page.text()
    assert '<html lang="ko">' in text
    assert "메시지를 보냈습니다." in text


async def test_multipart_post_is_taken_and_a_file_refused(form_client, redis):
    form = aiohttp.FormData(GOOD)
    response = await form_client.post(FORM, data=form, headers=BROWSER, allow_redirects=False)
    assert response.status == 303
    with_file = aiohttp.FormData(GOOD)
    with_file.add_field("attachment", b"%PDF", filename="a.pdf", content_type="application/pdf")
    response = await form_client.post(FORM, data=with_file)
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["field_codes"] == {"attachment": "file"}
    assert await redis.xlen(keys.QUEUE) == 1


async def test_field_errors_as_json_name_the_fields(form_client, redis):
    response = await form_client.post(FORM, json={"name": "", "email": "nope", "message": "hi"})
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "validation_failed"
    assert set(error["fields"]) == {"name", "email"}
    assert error["field_codes"] == {"name": "required", "email": "email"}
    assert await redis.exists(keys.QUEUE) == 0


async def test_a_value_too_long_says_the_limit_for_translations(form_client):
    response = await form_client.post(FORM, json={**GOOD, "name": "x" * 101})
    error = (await response.json())["error"]
    assert error["field_codes"] == {"name": "too_long"}
    assert error["field_max"] == {"name": 100}


async def test_field_errors_of_a_plain_post_are_a_page_keeping_what_was_typed(form_client, redis):
    typed = {"name": '<script>alert("x")</script>', "email": "nope", "message": "keep </textarea> me"}
    response = await form_client.post(FORM, data=typed, headers=BROWSER)
    assert response.status == 422
    assert response.content_type == "text/html"
    text = await response.text()
    assert "<script>alert" not in text
    assert 'value="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"' in text
    assert "keep &lt;/textarea&gt; me</textarea>" in text
    assert 'action="/api/v1/forms/contact"' in text
    assert "Not a valid email address." in text
    assert await redis.exists(keys.QUEUE) == 0


async def test_unknown_form_is_404(form_client):
    response = await form_client.post("/api/v1/forms/nope", json=GOOD)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "form_not_found"
    page = await form_client.post("/api/v1/forms/nope", data=GOOD, headers=BROWSER)
    assert page.status == 404
    assert page.content_type == "text/html"


async def test_idempotency_key_queues_once(form_client, redis):
    headers = {"Idempotency-Key": "k-1"}
    first = await (await form_client.post(FORM, json=GOOD, headers=headers)).json()
    second = await (await form_client.post(FORM, json=GOOD, headers=headers)).json()
    assert first["task_id"] == second["task_id"]
    assert await redis.xlen(keys.QUEUE) == 1


async def test_contract_endpoint_refuses_every_recipient_without_an_allowlist(form_client):
    response = await form_client.post(
        "/api/v1/email/received", json={"to": "owner@example.com", "subject": "s", "body": "b"}
    )
    assert response.status == 403


def body_of(mail: Any, subtype: str = "plain") -> str:
    """The message's text part as typed (the SMTP transfer turns line ends into CRLF)."""
    return mail.message.get_body(preferencelist=(subtype,)).get_content().replace("\r\n", "\n")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "victim%evil.com@example.org"),
        ("email", "evil.com!victim@example.org"),
        ("email", "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org"),
        ("name", "=?utf-8?q?Kim=0D=0ABcc:_victim@evil.com?="),
        ("name", "Kim\u2028Bcc: victim@evil.com"),
        ("name", "Kim\x85Bcc: victim@evil.com"),
    ],
)
async def test_header_tricks_in_a_form_field_are_422_naming_it(form_client, redis, field, value):
    # `email` becomes Reply-To, `name` the subject and From's display name.
    response = await form_client.post(FORM, json={**GOOD, field: value})
    assert response.status == 422
    assert field in (await response.json())["error"]["fields"]
    assert await redis.xlen(keys.QUEUE) == 0


async def test_error_redirect_takes_a_plain_posts_refusals(aiohttp_client, form_settings):
    form = replace(form_settings.forms["contact"], error_redirect="https://www.example.com/oops?x=1")
    client = await aiohttp_client(create_app(replace(form_settings, forms={"contact": form})))
    response = await client.post(FORM, data={"name": ""}, headers=BROWSER, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "https://www.example.com/oops?x=1&error=validation_failed"
    json_answer = await client.post(FORM, json={"name": ""})
    assert json_answer.status == 422


async def test_pages_speak_the_posted_lang_and_carry_the_page_headers(form_client):
    response = await form_client.post(
        FORM, data={"lang": "ko", "name": "", "email": "x", "message": "m"}, headers=BROWSER
    )
    assert response.status == 422
    text = await response.text()
    assert '<html lang="ko">' in text
    assert "필수 항목입니다." in text and "올바른 이메일 주소가 아닙니다." in text
    assert (
        "script-src" in response.headers["Content-Security-Policy"]
        or "default-src 'self'" in (response.headers["Content-Security-Policy"])
    )
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in text and " style=" not in text


async def test_the_thank_you_page_follows_by_script_or_refresh_and_escapes(form_client, store):
    queued = await (await form_client.post(FORM, json=GOOD)).json()
    page = await form_client.get(f"/forms/thanks?task_id={queued['task_id']}&lang=%22%3E%3Cx")
    text = await page.text()
    assert page.status == 200
    assert '<script src="/static/form-status.js" defer></script>' in text
    assert '<meta http-equiv="refresh"' in text  # inside <noscript>: a page without JavaScript
    assert f'data-task-id="{queued["task_id"]}"' in text
    assert "<x" not in text
    assert page.headers["Cache-Control"] == "no-store"
    unknown = await form_client.get(f"/forms/thanks?task_id={uuid.uuid4()}")
    assert unknown.status == 200
    assert "form-status.js" not in await unknown.text()
