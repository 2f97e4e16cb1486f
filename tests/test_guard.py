"""Abuse protection on a public form: allowlist, API keys, rate limits, CORS, honeypot,
idempotency, and the health endpoints."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio.connection import AbstractConnection

from mailhub.delivery import smtp_status
from mailhub.store import keys
from mailhub.web import appkeys
from mailhub.web.app import create_app
from tests.conftest import with_settings
from tests.sse import SseReader

SUBMIT = "/api/v1/email/received"
MAIL = {"to": "owner@example.com", "subject": "Hello", "body": "Hi"}
#: The Idempotency-Key scope of the test client (no API key, from 127.0.0.1).
LOCAL_CLIENT = "client:127.0.0.1"


@pytest.fixture
def make_client(aiohttp_client, settings, redis):
    # `redis` flushes: rate-limit counters are per client and window, whatever the amount.
    async def make(**changes):
        return await aiohttp_client(create_app(with_settings(settings, **changes)))

    return make


async def test_recipient_outside_the_allowlist_is_refused_and_never_sent(make_client, redis, worker, smtp):
    client = await make_client(allowed_recipients=("owner@example.com", "@corp.example"))
    refused = await client.post(SUBMIT, json={**MAIL, "to": "victim@elsewhere.example"})
    assert refused.status == 403
    error = (await refused.json())["error"]
    assert error["code"] == "recipient_not_allowed"
    assert "to" in error["fields"]
    assert await redis.xlen(keys.QUEUE) == 0
    for allowed in ("Owner@Example.com", "sales@corp.example"):
        assert (await client.post(SUBMIT, json={**MAIL, "to": allowed})).status == 200
    assert (await client.post(SUBMIT, json={**MAIL, "to": "x@sub.corp.example"})).status == 403
    mails = await smtp.handler.wait_for_count(2)
    assert all("elsewhere" not in m.rcpt_tos[0] for m in mails)


async def test_capture_mode_accepts_any_recipient(make_client):
    client = await make_client(smtp_host="", allowed_recipients=())
    assert (await client.post(SUBMIT, json={**MAIL, "to": "anyone@anywhere.example"})).status == 200


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic c2VjcmV0", "Bearer"])
async def test_submit_without_a_valid_api_key_is_401(make_client, redis, header):
    client = await make_client(api_keys=("k-123", "k-456"))
    headers = {"Authorization": header} if header else {}
    response = await client.post(SUBMIT, json=MAIL, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert await redis.xlen(keys.QUEUE) == 0


async def test_submit_with_a_valid_api_key_is_queued(make_client):
    client = await make_client(api_keys=("k-123", "k-456"))
    response = await client.post(SUBMIT, json=MAIL, headers={"Authorization": "Bearer k-456"})
    assert response.status == 200


async def test_rate_limit_is_shared_by_two_web_processes(make_client):
    # Hour-long windows: a window boundary falling inside the test is practically impossible.
    first = await make_client(rate_limit="3/hour")
    second = await make_client(rate_limit="3/hour")
    statuses = [(await c.post(SUBMIT, json=MAIL)).status for c in (first, second, first)]
    assert statuses == [200, 200, 200]
    limited = await second.post(SUBMIT, json=MAIL)
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert (await limited.json())["error"]["code"] == "rate_limited"


@pytest.fixture
def sent_commands(monkeypatch):
    """The name of the first command in every write to a Redis connection: one per round trip."""
    sent: list[str] = []
    send = AbstractConnection.send_packed_command

    async def counting(self, command, check_health=True):
        packed = command if isinstance(command, (bytes, str)) else b"".join(command)
        packed = packed.encode() if isinstance(packed, str) else packed
        sent.append(packed.split(b"\r\n")[2].decode().upper())
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


@pytest.mark.parametrize("rate_limit", ["off", "10/minute;100/day"])
async def test_an_accepted_submit_is_one_redis_round_trip(make_client, sent_commands, rate_limit):
    client = await make_client(rate_limit=rate_limit)
    # The first submit also loads the script into Redis (EVALSHA, SCRIPT LOAD, EVALSHA).
    assert (await client.post(SUBMIT, json=MAIL)).status == 200
    for headers in ({}, {"Idempotency-Key": "k-1"}, {"Idempotency-Key": "k-1"}):
        sent_commands.clear()
        assert (await client.post(SUBMIT, json=MAIL, headers=headers)).status == 200
        assert sent_commands == ["EVALSHA"]
    assert await client.server.app[appkeys.REDIS].xlen(keys.QUEUE) == 3


async def test_submits_refused_for_other_reasons_count_against_the_limit(make_client, redis):
    client = await make_client(
        rate_limit="5/hour", allowed_recipients=("owner@example.com",), honeypot_field="website"
    )
    refused = [
        await client.post(SUBMIT, json={**MAIL, "to": "not an address"}),
        await client.post(SUBMIT, data=b"{", headers={"Content-Type": "application/json"}),
        await client.post(SUBMIT, json=MAIL, headers={"Idempotency-Key": "bad\tkey"}),
        await client.post(SUBMIT, json={**MAIL, "to": "victim@elsewhere.example"}),
        await client.post(SUBMIT, json={**MAIL, "website": "http://spam.example"}),
    ]
    assert [r.status for r in refused] == [422, 400, 400, 403, 200]
    limited = await client.post(SUBMIT, json=MAIL)
    assert limited.status == 429
    assert (await limited.json())["error"]["code"] == "rate_limited"
    invalid_too = await client.post(SUBMIT, json={**MAIL, "to": "not an address"})
    assert invalid_too.status == 429
    assert 1 <= int(invalid_too.headers["Retry-After"]) <= 3600
    assert await redis.xlen(keys.QUEUE) == 0


async def test_idempotent_repeats_and_conflicts_count_and_a_refusal_queues_nothing(make_client, redis):
    client = await make_client(rate_limit="3/hour")
    headers = {"Idempotency-Key": "form-1"}
    first = await (await client.post(SUBMIT, json=MAIL, headers=headers)).json()
    repeat = await (await client.post(SUBMIT, json=MAIL, headers=headers)).json()
    assert repeat["task_id"] == first["task_id"]
    conflict = await client.post(SUBMIT, json={**MAIL, "body": "changed"}, headers=headers)
    assert conflict.status == 409
    limited = await client.post(SUBMIT, json=MAIL, headers={"Idempotency-Key": "form-2"})
    assert limited.status == 429
    assert await redis.xlen(keys.QUEUE) == 1
    assert not await redis.exists(keys.idempotency(LOCAL_CLIENT, "form-2"))


async def test_rate_limit_windows_reset(make_client, redis):
    client = await make_client(rate_limit="2/second")
    deadline = time.monotonic() + 5
    accepted = 0
    while (response := await client.post(SUBMIT, json=MAIL)).status == 200:
        accepted += 1
        assert accepted <= 4, "2/second let more than two windows' worth through"
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    while (response := await client.post(SUBMIT, json=MAIL)).status == 429:
        assert time.monotonic() < deadline, "the window never reset"
        await asyncio.sleep(0.05)
    assert response.status == 200
    assert await redis.xlen(keys.QUEUE) == accepted + 1


async def test_forwarded_for_is_ignored_from_untrusted_peers(make_client):
    client = await make_client(rate_limit="1/hour")
    assert (await client.post(SUBMIT, json=MAIL, headers={"X-Forwarded-For": "1.1.1.1"})).status == 200
    spoofed = await client.post(SUBMIT, json=MAIL, headers={"X-Forwarded-For": "2.2.2.2"})
    assert spoofed.status == 429


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(make_client):
    client = await make_client(rate_limit="1/hour", trusted_proxies=("127.0.0.1/32",))
    for address in ("1.1.1.1", "2.2.2.2"):
        response = await client.post(SUBMIT, json=MAIL, headers={"X-Forwarded-For": address})
        assert response.status == 200
    again = await client.post(SUBMIT, json=MAIL, headers={"X-Forwarded-For": "9.9.9.9, 1.1.1.1"})
    assert again.status == 429


async def test_cors_preflight_for_an_allowed_origin(make_client):
    client = await make_client(cors_origins=("https://www.example.com",))
    response = await client.options(
        SUBMIT,
        headers={
            "Origin": "https://www.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in response.headers["Access-Control-Allow-Headers"]
    post = await client.post(SUBMIT, json=MAIL, headers={"Origin": "https://www.example.com"})
    assert post.headers["Access-Control-Allow-Origin"] == "https://www.example.com"


async def test_cors_refuses_other_origins_by_default(make_client):
    client = await make_client()
    preflight = await client.options(
        SUBMIT, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    post = await client.post(SUBMIT, json=MAIL, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in post.headers


async def test_filled_honeypot_looks_queued_but_is_dropped(make_client, redis):
    client = await make_client(honeypot_field="website")
    response = await client.post(SUBMIT, json={**MAIL, "website": "http://spam.example"})
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "queued"
    assert uuid.UUID(answer["task_id"])
    assert await redis.xlen(keys.QUEUE) == 0
    human = await client.post(SUBMIT, json={**MAIL, "website": ""})
    assert human.status == 200
    assert await redis.xlen(keys.QUEUE) == 1


async def test_same_idempotency_key_and_body_queue_once(client, redis):
    headers = {"Idempotency-Key": "form-4711"}
    first = await (await client.post(SUBMIT, json=MAIL, headers=headers)).json()
    again = await client.post(SUBMIT, json=MAIL, headers=headers)
    assert again.status == 200
    assert (await again.json())["task_id"] == first["task_id"]
    assert await redis.xlen(keys.QUEUE) == 1
    assert 0 < await redis.ttl(keys.idempotency(LOCAL_CLIENT, "form-4711")) <= 24 * 3600


async def test_same_idempotency_key_with_another_body_is_409(client, redis):
    headers = {"Idempotency-Key": "form-4712"}
    assert (await client.post(SUBMIT, json=MAIL, headers=headers)).status == 200
    conflict = await client.post(SUBMIT, json={**MAIL, "body": "changed"}, headers=headers)
    assert conflict.status == 409
    assert (await conflict.json())["error"]["code"] == "idempotency_conflict"
    assert await redis.xlen(keys.QUEUE) == 1


@pytest.mark.parametrize("key", ["x" * 256, "bad\tkey"])
async def test_malformed_idempotency_key_is_400(client, key):
    response = await client.post(SUBMIT, json=MAIL, headers={"Idempotency-Key": key})
    assert response.status == 400


async def test_health_and_readiness(client, redis):
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200
    await smtp_status.record(redis, "w1", paused=True, reason="SMTP login refused: 535")
    paused = await client.get("/readyz")
    assert paused.status == 503
    # Public: what is wrong, not the SMTP reply (that is in the log and behind METRICS_TOKEN).
    assert (await paused.json())["reason"] == "SMTP sending is paused"
    assert "535" not in await paused.text()
    await smtp_status.record(redis, "w1", paused=False)
    assert (await client.get("/readyz")).status == 200


async def test_wrong_api_keys_count_against_the_rate_limit(make_client):
    client = await make_client(api_keys=("k-123",), rate_limit="2/hour")
    wrong = {"Authorization": "Bearer guess"}
    statuses = [(await client.post(SUBMIT, json=MAIL, headers=wrong)).status for _ in range(3)]
    assert statuses == [401, 401, 429]


@pytest.mark.parametrize(
    "content_type", ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_another_origins_no_cors_posts_do_not_lock_the_visitor_out(make_client, redis, content_type):
    # What a page on any origin can make the visitor's browser send without a CORS preflight.
    client = await make_client(rate_limit="3/hour", honeypot_field="website")
    forged = {"Origin": "https://evil.example", "Content-Type": content_type}
    for _ in range(20):
        response = await client.post(SUBMIT, data=b'{"to": "x"}', headers=forged)
        assert response.status == 415
        assert (await response.json())["error"]["code"] == "unsupported_media_type"
    assert (await client.post(SUBMIT, json=MAIL)).status == 200
    assert await redis.xlen(keys.QUEUE) == 1


async def test_wrong_api_keys_count_but_a_wrong_content_type_does_not(make_client):
    client = await make_client(api_keys=("k-123",), rate_limit="2/hour")
    plain = {"Authorization": "Bearer guess", "Content-Type": "text/plain"}
    assert [(await client.post(SUBMIT, data=b"{}", headers=plain)).status for _ in range(5)] == [415] * 5
    wrong = {"Authorization": "Bearer guess"}
    assert [(await client.post(SUBMIT, json=MAIL, headers=wrong)).status for _ in range(3)] == [401, 401, 429]
    right = {"Authorization": "Bearer k-123"}
    assert (await client.post(SUBMIT, json=MAIL, headers=right)).status == 429


async def _submission_metric(client, outcome: str) -> float:
    text = await (await client.get("/metrics")).text()
    line = f'mailhub_submissions_total{{outcome="{outcome}"}} '
    return next((float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)), 0.0)


async def test_a_honeypot_task_reads_like_a_real_one(make_client, redis, settings):
    client = await make_client(honeypot_field="website")
    caught_before = await _submission_metric(client, "honeypot")
    real = (await (await client.post(SUBMIT, json=MAIL)).json())["task_id"]
    spam = {**MAIL, "website": "http://spam.example"}
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
        == {"to": MAIL["to"], "status": "pending", "attempts": 0, "seq": 1, "event": "queued"}
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
    client = await make_client(honeypot_field="website", allowed_recipients=("owner@example.com",))
    invalid = await client.post(SUBMIT, json={"to": "nobody", "website": "x"})
    assert invalid.status == 422
    refused = await client.post(SUBMIT, json={**MAIL, "to": "victim@elsewhere.example", "website": "x"})
    assert refused.status == 403
    headers = {"Idempotency-Key": "bot-1"}
    first = await (await client.post(SUBMIT, json={**MAIL, "website": "x"}, headers=headers)).json()
    again = await (await client.post(SUBMIT, json={**MAIL, "website": "x"}, headers=headers)).json()
    assert again["task_id"] == first["task_id"]
    changed = await client.post(SUBMIT, json={**MAIL, "body": "other", "website": "x"}, headers=headers)
    assert changed.status == 409


async def test_an_idempotency_key_is_scoped_to_its_client(make_client, redis):
    client = await make_client(trusted_proxies=("127.0.0.1/32",))
    key = {"Idempotency-Key": "form-1"}

    async def submit(address: str, body: dict = MAIL):
        return await client.post(SUBMIT, json=body, headers={**key, "X-Forwarded-For": address})

    first = (await (await submit("198.51.100.1")).json())["task_id"]
    other = (await (await submit("198.51.100.2")).json())["task_id"]
    assert first != other
    assert (await (await submit("198.51.100.1")).json())["task_id"] == first
    assert (await submit("198.51.100.1", {**MAIL, "body": "changed"})).status == 409
    assert (await submit("198.51.100.3", {**MAIL, "body": "changed"})).status == 200
    assert await redis.xlen(keys.QUEUE) == 3


async def test_an_idempotency_key_is_scoped_to_its_api_key(make_client, redis):
    client = await make_client(api_keys=("k-1", "k-2"), trusted_proxies=("127.0.0.1/32",))

    async def submit(api_key: str, address: str) -> str:
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Idempotency-Key": "job-7",
            "X-Forwarded-For": address,
        }
        return (await (await client.post(SUBMIT, json=MAIL, headers=headers)).json())["task_id"]

    first = await submit("k-1", "198.51.100.1")
    assert await submit("k-2", "198.51.100.1") != first
    # One API key is one caller, whichever of its servers sends.
    assert await submit("k-1", "198.51.100.9") == first
    assert await redis.xlen(keys.QUEUE) == 2
