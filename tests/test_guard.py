"""The submit guard: recipient allowlist, API keys, honeypot."""

from __future__ import annotations

import uuid

import pytest

from mailhub.store import keys
from tests.helpers import MAIL_JSON, RESULT, SUBMIT
from tests.sse import SseReader


async def test_recipient_outside_the_allowlist_is_refused_and_never_sent(make_client, redis, worker, smtp):
    client = await make_client(allowed_recipients=("owner@example.com", "@corp.example"))
    refused = await client.post(SUBMIT, json={**MAIL_JSON, "to": "victim@elsewhere.example"})
    assert refused.status == 403
    error = (await refused.json())["error"]
    assert error["code"] == "recipient_not_allowed"
    assert "to" in error["fields"]
    assert await redis.xlen(keys.QUEUE) == 0
    for allowed in ("Owner@Example.com", "sales@corp.example"):
        assert (await client.post(SUBMIT, json={**MAIL_JSON, "to": allowed})).status == 200
    assert (await client.post(SUBMIT, json={**MAIL_JSON, "to": "x@sub.corp.example"})).status == 403
    mails = await smtp.handler.wait_for_count(2)
    assert all("elsewhere" not in m.rcpt_tos[0] for m in mails)


async def test_capture_mode_accepts_any_recipient(make_client):
    client = await make_client(smtp_host="", allowed_recipients=())
    assert (await client.post(SUBMIT, json={**MAIL_JSON, "to": "anyone@anywhere.example"})).status == 200


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic c2VjcmV0", "Bearer"])
async def test_submit_without_a_valid_api_key_is_401(make_client, redis, header):
    client = await make_client(api_keys=("k-123", "k-456"))
    headers = {"Authorization": header} if header else {}
    response = await client.post(SUBMIT, json=MAIL_JSON, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert await redis.xlen(keys.QUEUE) == 0


async def test_submit_with_a_valid_api_key_is_queued(make_client, redis):
    client = await make_client(api_keys=("k-123", "k-456"))
    response = await client.post(SUBMIT, json=MAIL_JSON, headers={"Authorization": "Bearer k-456"})
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "queued"
    assert await redis.xlen(keys.QUEUE) == 1
    document = await (await client.get(RESULT, params={"task_id": answer["task_id"]})).json()
    assert (document["status"], document["to"]) == ("pending", MAIL_JSON["to"])


async def test_filled_honeypot_looks_queued_but_is_dropped(make_client, redis):
    client = await make_client(honeypot_field="website")
    response = await client.post(SUBMIT, json={**MAIL_JSON, "website": "http://spam.example"})
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "queued"
    assert uuid.UUID(answer["task_id"])
    assert await redis.xlen(keys.QUEUE) == 0
    human = await client.post(SUBMIT, json={**MAIL_JSON, "website": ""})
    assert human.status == 200
    assert await redis.xlen(keys.QUEUE) == 1


async def _submission_metric(client, outcome: str) -> float:
    text = await (await client.get("/metrics")).text()
    line = f'mailhub_submissions_total{{outcome="{outcome}"}} '
    return next((float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)), 0.0)


async def test_a_honeypot_task_reads_like_a_real_one(make_client, redis, settings):
    client = await make_client(honeypot_field="website")
    caught_before = await _submission_metric(client, "honeypot")
    real = (await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"]
    spam = {**MAIL_JSON, "website": "http://spam.example"}
    decoy = (await (await client.post(SUBMIT, json=spam)).json())["task_id"]
    assert await _submission_metric(client, "honeypot") == caught_before + 1
    documents = []
    for task_id in (real, decoy):
        response = await client.get("/api/v1/email/result", params={"task_id": task_id})
        assert response.status == 200
        documents.append(await response.json())
    shape = [{k: v for k, v in doc.items() if k not in ("task_id", "at")} for doc in documents]
    assert (
        shape[0]
        == shape[1]
        == {"to": MAIL_JSON["to"], "status": "pending", "attempts": 0, "seq": 1, "event": "queued"}
    )
    # Nothing of the spam is kept or queued; the decoy expires like a finished task.
    assert await redis.xlen(keys.QUEUE) == 1
    assert await redis.hget(keys.task(decoy), "body") == ""
    assert 0 < await redis.ttl(keys.task(decoy)) <= settings.result_retention
    async with client.get("/api/v1/email/events", params={"task_id": decoy}) as stream:
        assert stream.status == 200
        first = await SseReader(stream).next()
        assert first is not None and first.doc == documents[1]
    async with client.ws_connect("/api/v1/email/ws") as ws:
        await ws.send_json({"subscribe": decoy})
        assert await ws.receive_json(timeout=5) == documents[1]


async def test_a_honeypot_submit_is_checked_like_any_other(make_client):
    client = await make_client(honeypot_field="website", allowed_recipients=(MAIL_JSON["to"],))
    invalid = await client.post(SUBMIT, json={"to": "nobody", "website": "x"})
    assert invalid.status == 422
    refused = await client.post(SUBMIT, json={**MAIL_JSON, "to": "victim@elsewhere.example", "website": "x"})
    assert refused.status == 403
    headers = {"Idempotency-Key": "bot-1"}
    first = await (await client.post(SUBMIT, json={**MAIL_JSON, "website": "x"}, headers=headers)).json()
    again = await (await client.post(SUBMIT, json={**MAIL_JSON, "website": "x"}, headers=headers)).json()
    assert again["task_id"] == first["task_id"]
    changed = await client.post(SUBMIT, json={**MAIL_JSON, "body": "other", "website": "x"}, headers=headers)
    assert changed.status == 409
