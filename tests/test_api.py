"""The HTTP contract: every documented answer, every error code, never a 5xx."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace

import pytest

from mailhub.store import inbox, keys
from mailhub.web.app import create_app
from tests.helpers import MAIL_JSON, RESULT, SUBMIT, wait_for_status
from tests.smtp_server import Fault


async def test_submit_answers_task_id_and_queued(client, redis):
    response = await client.post(SUBMIT, json=MAIL_JSON)
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "queued"
    assert uuid.UUID(answer["task_id"]).version == 4
    assert answer["result_url"] == f"{RESULT}?task_id={answer['task_id']}"
    assert await redis.xlen(keys.QUEUE) == 1


async def test_result_while_queued_is_pending_with_to(client):
    task_id = (await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"]
    response = await client.get(RESULT, params={"task_id": task_id})
    assert response.status == 200
    document = await response.json()
    assert document["status"] == "pending"
    assert document["to"] == "user@example.com"
    assert "reason" not in document


async def test_result_after_delivery_is_success_with_attempts(client, drain):
    task_id = (await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"]
    await drain()
    document = await (await client.get(RESULT, params={"task_id": task_id})).json()
    assert document["status"] == "success"
    assert document["to"] == "user@example.com"
    assert document["attempts"] == 1


async def test_result_after_permanent_failure_has_reason(client, drain, smtp):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    task_id = (await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"]
    await drain()
    document = await (await client.get(RESULT, params={"task_id": task_id})).json()
    assert document["status"] == "failed"
    assert document["to"] == "user@example.com"
    assert document["attempts"] == 1
    assert document["reason"] == "the receiving server refused the message"


async def test_unknown_task_is_404_json(client):
    response = await client.get(RESULT, params={"task_id": str(uuid.uuid4())})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "query", [{}, {"task_id": ""}, {"task_id": "nope"}, {"task_id": "x" * 1000}, {"task_id": "1' OR '1'='1"}]
)
async def test_missing_or_malformed_task_id_is_422(client, query):
    response = await client.get(RESULT, params=query)
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "validation_failed"
    assert "task_id" in error["fields"]


async def test_not_json_is_400(client):
    response = await client.post(SUBMIT, data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "JSON" in (await response.json())["error"]["message"]


async def test_not_utf8_is_400(client):
    body = json.dumps(MAIL_JSON, ensure_ascii=False).encode("euc-kr")
    response = await client.post(SUBMIT, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "UTF-8" in (await response.json())["error"]["message"]


async def test_deeply_nested_json_is_400_not_500(client):
    response = await client.post(SUBMIT, data=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert response.status == 400


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_wrong_content_type_is_415(client, content_type):
    response = await client.post(SUBMIT, data=json.dumps(MAIL_JSON), headers={"Content-Type": content_type})
    assert response.status == 415
    assert (await response.json())["error"]["code"] == "unsupported_media_type"


async def test_oversized_request_is_413(client, redis):
    response = await client.post(SUBMIT, json={**MAIL_JSON, "body": "x" * 1_000_000})
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "too_large"
    assert await redis.xlen(keys.QUEUE) == 0


INVALID = [
    ({"to": "not-an-address"}, "to"),
    ({"to": "a@b.com, c@d.com"}, "to"),
    ({"to": "user@example.com\r\nBcc: victim@example.com"}, "to"),
    ({"subject": ""}, "subject"),
    ({"subject": "   "}, "subject"),
    ({"subject": "x" * 256}, "subject"),
    ({"subject": "Hello\r\nBcc: victim@example.com"}, "subject"),
    ({"subject": "Hello\n"}, "subject"),
    ({"subject": "nul\x00byte"}, "subject"),
    ({"subject": "\ud800 lone surrogate"}, "subject"),
    ({"body": ""}, "body"),
    ({"body": "x" * (64 * 1024 + 1)}, "body"),
    ({"username": "x" * 101}, "username"),
    ({"username": "Kim\r\nBcc: victim@example.com"}, "username"),
    ({"subject": 42}, "subject"),
    ({"to": None}, "to"),
]


@pytest.mark.parametrize(("change", "field"), INVALID)
async def test_invalid_field_is_422_naming_it_and_nothing_queued(client, redis, change, field):
    response = await client.post(SUBMIT, json={**MAIL_JSON, **change})
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "validation_failed"
    assert field in error["fields"]
    assert await redis.xlen(keys.QUEUE) == 0


@pytest.mark.parametrize("missing", ["to", "subject", "body"])
async def test_missing_required_field_is_422(client, missing):
    body = {k: v for k, v in MAIL_JSON.items() if k != missing}
    response = await client.post(SUBMIT, json=body)
    assert response.status == 422
    assert missing in (await response.json())["error"]["fields"]


@pytest.mark.parametrize("payload", [[], "text", 42, None, {"unknown": 1, **MAIL_JSON}])
async def test_wrong_json_shape_is_422(client, payload):
    response = await client.post(
        SUBMIT, data=json.dumps(payload), headers={"Content-Type": "application/json"}
    )
    assert response.status == 422


async def test_boundary_values_are_accepted(client):
    body = {**MAIL_JSON, "subject": "x" * 255, "username": "y" * 100, "body": "z" * 64 * 1024}
    response = await client.post(SUBMIT, json=body)
    assert response.status == 200


async def test_wrong_method_is_405_json(client):
    response = await client.get(SUBMIT)
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_unknown_path_is_404_json(client):
    response = await client.get("/api/v1/nothing")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_openapi_spec_describes_the_endpoints(client):
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"] == "3.0.3"
    assert "post" in spec["paths"]["/api/v1/email/received"]
    assert "get" in spec["paths"]["/api/v1/email/result"]
    request = spec["components"]["schemas"]["EmailRequest"]
    assert set(request["required"]) == {"to", "subject", "body"}


async def test_swagger_ui_is_served_without_a_cdn(client):
    page = await (await client.get("/docs")).text()
    assert "swagger-ui-bundle.js" in page
    assert "https://" not in page
    bundle = await client.get("/docs/static/swagger-ui-bundle.js")
    assert bundle.status == 200


async def test_dev_inbox_exists_only_in_capture_mode(client, aiohttp_client, settings, redis):
    assert (await client.get("/dev/inbox")).status == 404
    assert (await client.get("/dev/inbox/messages")).status == 404
    capturing = await aiohttp_client(create_app(replace(settings, smtp_host="")))
    assert await (await capturing.get("/dev/inbox/messages")).json() == []
    caught = {"from": "a@example.com", "to": ["b@example.com"], "subject": "<Hi>", "body": "x"}
    await inbox.keep(redis, {**caught, "message_id": "<1@example.com>", "received_at": "now"})
    [listed] = await (await capturing.get("/dev/inbox/messages")).json()
    assert {k: listed[k] for k in caught} == caught
    page = await capturing.get("/dev/inbox")
    assert page.status == 200
    assert "&lt;Hi&gt;" in await page.text()


def b_word(text: str) -> str:
    """An RFC 2047 base64 encoded word carrying `text`."""
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="


#: Encoded words that Python before 3.11.10 / 3.12.5 (CVE-2024-6923) folds into
#: header lines of their own: a Bcc, a second From, a Reply-To, an HTML body.
ENCODED_INJECTIONS = [
    "=?utf-8?q?hi=0D=0ABcc:_victim@evil.com?=",
    "=?UTF-8*en?Q?hi=0D=0ABcc:_victim@evil.com?=",
    "=?utf-8?q?hi=0D=0A Bcc: victim@evil.com?=",
    b_word("hi\r\nFrom: boss@example.com\r\nReply-To: thief@evil.com"),
    b_word("hi\r\nContent-Type: text/html\r\n\r\n<b>pay</b>"),
]
#: The same in an address: a local part that becomes three recipients, a display name.
ADDRESS_INJECTIONS = [
    "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org",
    b_word("x\r\nBcc: victim@evil.com") + "@example.org",
    "=?utf-8?q?Kim=0D=0ABcc:_victim@evil.com?= <user@example.com>",
    b_word("Kim\r\nReply-To: thief@evil.com") + " <user@example.com>",
]
#: Line breaks outside ASCII's control characters, and C1 controls.
UNICODE_BREAKS = ["\u2028", "\u2029", "\x85", "\x80", "\x9f", "\x0b", "\x0c", "\x1c"]
HEADER_TRICKS = [
    *[("subject", value) for value in ENCODED_INJECTIONS],
    *[("username", value) for value in ENCODED_INJECTIONS],
    *[("to", value) for value in ADDRESS_INJECTIONS],
    *[("subject", f"Hello{c}Bcc: victim@evil.com") for c in UNICODE_BREAKS],
    *[("username", f"Kim{c}Bcc: victim@evil.com") for c in UNICODE_BREAKS],
    *[("to", f"user{c}@example.com") for c in UNICODE_BREAKS],
    *[("to", f"user@example.com{c}Bcc: victim@evil.com") for c in UNICODE_BREAKS],
    ("to", "victim%evil.com@example.org"),
    ("to", "evil.com!victim@example.org"),
    ("to", '"victim%evil.com"@example.org'),
]


@pytest.mark.parametrize(("field", "value"), HEADER_TRICKS)
async def test_header_tricks_are_422_naming_the_field_and_nothing_queued(client, redis, field, value):
    response = await client.post(SUBMIT, json={**MAIL_JSON, field: value})
    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "validation_failed"
    assert set(error["fields"]) == {field}
    assert await redis.xlen(keys.QUEUE) == 0


def header_names(raw: bytes) -> list[str]:
    """The field names of a raw message's header block, continuation lines unfolded."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    return sorted(line.split(":", 1)[0] for line in head.split("\r\n") if line[:1] not in (" ", "\t"))


MAILHUB_HEADERS = sorted(
    [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
)


async def test_no_header_trick_reaches_the_smtp_server(client, store, worker, smtp):
    for field, value in HEADER_TRICKS:
        assert (await client.post(SUBMIT, json={**MAIL_JSON, field: value})).status == 422
    task_id = (await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"]
    assert (await wait_for_status(store, task_id))["status"] == "success"
    [mail] = await smtp.handler.wait_for_count(1)
    assert header_names(mail.data) == MAILHUB_HEADERS
    assert mail.rcpt_tos == [MAIL_JSON["to"]]


async def test_look_alike_values_arrive_with_only_the_headers_mailhub_wrote(client, store, worker, smtp):
    subject = "Re: 100% =? sure ?= 안녕하세요, 홍길동 님 — " + "긴 제목 " * 30
    mail_request = {
        **MAIL_JSON,
        "to": "o'brien+tag@example.com",
        "subject": subject,
        "username": "Kim ?= =?x",
    }
    task_id = (await (await client.post(SUBMIT, json=mail_request)).json())["task_id"]
    assert (await wait_for_status(store, task_id))["status"] == "success"
    [mail] = await smtp.handler.wait_for_count(1)
    assert header_names(mail.data) == MAILHUB_HEADERS
    assert b"\r\n " in mail.data.split(b"\r\n\r\n", 1)[0]  # the long subject was folded
    assert mail.message["Subject"] == subject
    assert mail.message["To"] == "o'brien+tag@example.com"
    assert mail.rcpt_tos == ["o'brien+tag@example.com"]
