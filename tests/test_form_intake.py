"""One post to a form: origins, rate limit, honeypot, confirmation, hostile values."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mailhub.forms.definitions import Confirmation, FieldRule, FormDefinition, capture_contact_form
from mailhub.store import keys
from mailhub.web.app import create_app
from tests.helpers import wait_for_status
from tests.verify_server import verify_server

FORM = "/api/v1/forms/contact"
GOOD = {"name": "Kim", "email": "kim@example.org", "message": "Hello"}
SECRETS = {"turnstile": "test-secret"}


async def _client(aiohttp_client: Any, settings, form: FormDefinition, **changes: Any):
    app = create_app(replace(settings, forms={form.form_id: form}, allowed_recipients=(), **changes))
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://www.example.com"}, 200),
        ({"Origin": "HTTPS://WWW.EXAMPLE.COM"}, 200),
        ({"Referer": "https://www.example.com/contact.html?x=1"}, 200),
        ({"Origin": "https://evil.example.net", "Referer": "https://www.example.com/"}, 403),
        ({"Referer": "https://evil.example.net/contact"}, 403),
        ({"Origin": "null"}, 403),
        ({}, 403),
    ],
)
async def test_origins_are_checked_and_fail_closed(aiohttp_client, settings, redis, headers, status):
    form = replace(capture_contact_form("owner@example.com"), origins=("https://www.example.com",))
    client = await _client(aiohttp_client, settings, form)
    response = await client.post(FORM, json=GOOD, headers=headers)
    assert response.status == status
    if status == 403:
        assert (await response.json())["error"]["code"] == "origin_not_allowed"
    assert await redis.exists(keys.QUEUE) == (status == 200)


async def test_the_forms_rate_limit_counts_per_client_and_form(aiohttp_client, settings, redis):
    form = replace(capture_contact_form("owner@example.com"), rate_windows=((2, 3600),))
    client = await _client(aiohttp_client, settings, form)
    statuses = [(await client.post(FORM, json=GOOD)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = await client.post(FORM, json=GOOD)
    assert int(refused.headers["Retry-After"]) > 0
    assert await redis.xlen(keys.QUEUE) == 2


async def test_rate_limit_also_counts_refused_posts(aiohttp_client, settings, redis):
    form = replace(capture_contact_form("owner@example.com"), rate_windows=((2, 3600),))
    client = await _client(aiohttp_client, settings, form)
    statuses = [(await client.post(FORM, json={"name": ""})).status for _ in range(3)]
    assert statuses == [422, 422, 429]


async def test_the_global_rate_limit_applies_to_forms_too(aiohttp_client, settings, redis):
    client = await _client(
        aiohttp_client, settings, capture_contact_form("owner@example.com"), rate_limit="2/hour"
    )
    statuses = [(await client.post(FORM, json=GOOD)).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_another_sites_posts_do_not_lock_the_visitor_out(aiohttp_client, settings, redis):
    # What a page on any site can make its visitor's browser send: plain form posts, no preflight.
    form = replace(
        capture_contact_form("owner@example.com"),
        origins=("https://www.example.com",),
        rate_windows=((3, 3600),),
    )
    client = await _client(aiohttp_client, settings, form, rate_limit="3/hour")
    evil = {"Origin": "https://evil.example.net"}
    with_file = aiohttp.FormData({"name": "x"})
    with_file.add_field("attachment", io.BytesIO(b"x"), filename="x.txt")
    posts = [
        *[client.post(FORM, data={"name": ""}, headers=evil) for _ in range(10)],
        client.post(FORM, data=with_file, headers=evil),
        client.post(FORM, data=b"name=x", headers={**evil, "Content-Type": "text/plain"}),
        client.post("/api/v1/forms/no-such-form", data=GOOD, headers=evil),
    ]
    statuses = [(await post).status for post in posts]
    assert statuses == [403] * 12 + [404]
    assert await redis.keys(keys.rate_limit(3600, "*")) == []
    welcome = await client.post(FORM, json=GOOD, headers={"Origin": "https://www.example.com"})
    assert welcome.status == 200


async def test_a_filled_honeypot_looks_accepted_and_queues_nothing(aiohttp_client, settings, redis):
    form = replace(capture_contact_form("owner@example.com"), honeypot="website")
    client = await _client(aiohttp_client, settings, form)
    trap = await client.post(FORM, json={**GOOD, "website": "http://spam.example"})
    real = await client.post(FORM, json=GOOD)
    assert trap.status == real.status == 200
    assert set(await trap.json()) == set(await real.json())
    assert await redis.xlen(keys.QUEUE) == 1
    page = await client.post(
        FORM, data={**GOOD, "website": "x"}, headers={"Accept": "text/html"}, allow_redirects=False
    )
    assert page.status == 303
    assert page.headers["Location"].startswith("/forms/thanks?task_id=")


def _confirming_form(per_day: int = 3) -> FormDefinition:
    return replace(
        capture_contact_form("owner@example.com"),
        captcha="turnstile",
        confirmation=Confirmation(
            "We got your message, {name}", "Hello {name},\n\nyou wrote:\n{message}\n", per_day
        ),
    )


async def test_the_visitor_gets_one_confirmation(aiohttp_client, settings, store, worker, smtp):
    async with verify_server() as verify:
        client = await _client(
            aiohttp_client,
            settings,
            _confirming_form(),
            captcha_secrets=SECRETS,
            captcha_verify_url=verify.url,
        )
        response = await client.post(FORM, json={**GOOD, "cf-turnstile-response": "good-1"})
        assert response.status == 200
        await wait_for_status(store, (await response.json())["task_id"])
        mails = await smtp.handler.wait_for_count(2)
    by_rcpt = {tuple(mail.rcpt_tos): mail for mail in mails}
    assert set(by_rcpt) == {("owner@example.com",), ("kim@example.org",)}
    confirmation = by_rcpt[("kim@example.org",)].message
    assert confirmation["Subject"] == "We got your message, Kim"
    assert confirmation["Reply-To"] is None
    assert len(smtp.handler.messages) == 2


async def test_over_the_daily_limit_the_main_mail_goes_without_confirmation(
    aiohttp_client, settings, store, redis, worker, smtp
):
    async with verify_server() as verify:
        client = await _client(
            aiohttp_client,
            settings,
            _confirming_form(per_day=1),
            captcha_secrets=SECRETS,
            captcha_verify_url=verify.url,
        )
        for token in ("good-a", "good-b"):
            response = await client.post(FORM, json={**GOOD, "cf-turnstile-response": token})
            assert response.status == 200
            await wait_for_status(store, (await response.json())["task_id"])
    mails = await smtp.handler.wait_for_count(3)
    rcpts = sorted(mail.rcpt_tos[0] for mail in mails)
    assert rcpts == ["kim@example.org", "owner@example.com", "owner@example.com"]
    assert await redis.xlen(keys.QUEUE) == 0


HOSTILE = [
    "Kim\r\nBcc: victim@example.net",
    "Kim\nBcc: victim@example.net",
    "Kim\u2028Bcc: victim@example.net",
    "{email}",
    "{{x}}",
    '<script>alert("x")</script>',
]


@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_names_are_refused_or_kept_literally(
    aiohttp_client, settings, store, worker, smtp, value
):
    client = await _client(aiohttp_client, settings, _html_form())
    response = await client.post(FORM, json={**GOOD, "name": value, "message": f"body {value}"})
    if any(c in value for c in "\r\n\u2028"):
        assert response.status == 422
        assert set((await response.json())["error"]["fields"]) == {"name"}
        return
    assert response.status == 200
    await wait_for_status(store, (await response.json())["task_id"])
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.rcpt_tos == ["owner@example.com"]
    assert mail.message["Subject"] == f"Contact: {value}"
    text = mail.message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    assert f"From {value} <kim@example.org>:" in text
    assert f"body {value}" in text
    html = mail.message.get_body(preferencelist=("html",)).get_content()
    assert "<script>" not in html
    assert f"<p>{_escaped(value)}</p>" in html


@pytest.mark.parametrize("value", ["line one\r\nline two", "a\u2028b", "{name} {{message}}", "<b>hi</b>"])
async def test_a_multiline_field_keeps_line_breaks_and_braces(
    aiohttp_client, settings, store, worker, smtp, value
):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    response = await client.post(FORM, data={**GOOD, "message": value})
    assert response.status == 200
    await wait_for_status(store, (await response.json())["task_id"])
    [mail] = await smtp.handler.wait_for_count(1)
    text = mail.message.get_content().replace("\r\n", "\n")
    assert value.replace("\r\n", "\n") in text


@pytest.mark.parametrize(
    "extra", [{"to": "victim@example.net"}, {"cc": "victim@example.net"}, {"bcc": "victim@example.net"}]
)
async def test_posted_recipients_are_ignored(aiohttp_client, settings, store, worker, smtp, extra):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    response = await client.post(FORM, json={**GOOD, **extra})
    assert response.status == 200
    await wait_for_status(store, (await response.json())["task_id"])
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.rcpt_tos == ["owner@example.com"]
    assert b"victim" not in mail.data


async def test_a_visitor_typing_username_keeps_it(aiohttp_client, settings, store, worker, smtp):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    response = await client.post(FORM, json={**GOOD, "message": "hi {username}"})
    await wait_for_status(store, (await response.json())["task_id"])
    [mail] = await smtp.handler.wait_for_count(1)
    assert "hi {username}" in mail.message.get_content()


async def test_a_thousand_unknown_fields_are_refused_without_a_500(aiohttp_client, settings, redis):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    many = {**GOOD, **{f"extra{i}": "x" for i in range(1000)}}
    for response in (
        await client.post(FORM, data=many),
        await client.post(FORM, json=many),
        await client.post(
            FORM,
            data=aiohttp.FormData(
                {**GOOD, **{f"extra{i}": "x" for i in range(150)}}, default_to_multipart=True
            ),
        ),
    ):
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "too_large"
    assert await redis.exists(keys.QUEUE) == 0


async def test_a_few_unknown_fields_are_dropped(aiohttp_client, settings, store, worker, smtp):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    response = await client.post(FORM, data={**GOOD, **{f"extra{i}": "SECRET" for i in range(50)}})
    assert response.status == 200
    [mail] = await smtp.handler.wait_for_count(1)
    assert b"SECRET" not in mail.data


async def test_a_10_mb_body_is_413_without_a_500(aiohttp_client, settings, redis):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    body = b"message=" + b"a" * (10 * 1024 * 1024)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await client.post(FORM, data=io.BytesIO(body), headers=headers)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "too_large"
    page = await client.post(FORM, data=io.BytesIO(body), headers={**headers, "Accept": "text/html"})
    assert page.status == 413
    assert page.content_type == "text/html"
    assert await redis.exists(keys.QUEUE) == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"name=%FF%FE", "application/x-www-form-urlencoded", 422),
        (b"\xff\xfe", "application/x-www-form-urlencoded", 400),
        (b"[1, 2]", "application/json", 400),
        (json.dumps({"name": ["a"], "email": 1, "message": None}).encode(), "application/json", 422),
        (b"name=x", "text/plain", 415),
    ],
)
async def test_odd_bodies_get_clear_errors(aiohttp_client, settings, body, content_type, status):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    response = await client.post(FORM, data=body, headers={"Content-Type": content_type})
    assert response.status == status
    assert "error" in await response.json()


def _html_form() -> FormDefinition:
    return replace(
        capture_contact_form("owner@example.com"),
        html="<p>{name}</p><pre>{message}</pre>",
        fields=(
            FieldRule("name", required=True, max_length=100),
            FieldRule("email", required=True, type="email", max_length=254),
            FieldRule("message", required=True, max_length=5000, multiline=True),
        ),
    )


def _escaped(value: str) -> str:
    import html

    return html.escape(value)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            b'--b\r\nContent-Disposition: form-data; name="\x13[A{\x1f="\r\n\r\n{}\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
        (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),
        (b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx', "multipart/form-data; boundary=b"),
        (b"whatever", "multipart/form-data"),
        (b"whatever", "multipart/form-data; boundary=" + "x" * 100),
        (
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n@@@\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n'
            b"Content-Type: text/plain; charset=nope\r\n\r\nx\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
        ),
        (
            b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\n\xff\xfe\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ],
)
async def test_malformed_multipart_is_a_clear_4xx(aiohttp_client, settings, body, content_type):
    client = await _client(aiohttp_client, settings, capture_contact_form("owner@example.com"))
    response = await client.post(
        FORM,
        data=body,
        headers={"Content-Type": content_type},
    )
    assert 400 <= response.status < 500
    assert "error" in await response.json()
