"""Rate limits: shared by every web process, counted in the submit's one round trip, and
what counts against them (refusals, wrong API keys) and what does not (no-CORS posts)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio.connection import AbstractConnection

from mailhub.store import keys
from mailhub.web import appkeys
from tests.helpers import LOCAL_CLIENT, MAIL_JSON, SUBMIT


async def test_rate_limit_is_shared_by_two_web_processes(make_client):
    # Hour-long windows: a window boundary falling inside the test is practically impossible.
    first = await make_client(rate_limit="3/hour")
    second = await make_client(rate_limit="3/hour")
    statuses = [(await c.post(SUBMIT, json=MAIL_JSON)).status for c in (first, second, first)]
    assert statuses == [200, 200, 200]
    limited = await second.post(SUBMIT, json=MAIL_JSON)
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
    assert (await client.post(SUBMIT, json=MAIL_JSON)).status == 200
    for headers in ({}, {"Idempotency-Key": "k-1"}, {"Idempotency-Key": "k-1"}):
        sent_commands.clear()
        assert (await client.post(SUBMIT, json=MAIL_JSON, headers=headers)).status == 200
        assert sent_commands == ["EVALSHA"]
    assert await client.server.app[appkeys.REDIS].xlen(keys.QUEUE) == 3


async def test_submits_refused_for_other_reasons_count_against_the_limit(make_client, redis):
    client = await make_client(
        rate_limit="5/hour", allowed_recipients=(MAIL_JSON["to"],), honeypot_field="website"
    )
    refused = [
        await client.post(SUBMIT, json={**MAIL_JSON, "to": "not an address"}),
        await client.post(SUBMIT, data=b"{", headers={"Content-Type": "application/json"}),
        await client.post(SUBMIT, json=MAIL_JSON, headers={"Idempotency-Key": "bad\tkey"}),
        await client.post(SUBMIT, json={**MAIL_JSON, "to": "victim@elsewhere.example"}),
        await client.post(SUBMIT, json={**MAIL_JSON, "website": "http://spam.example"}),
    ]
    assert [r.status for r in refused] == [422, 400, 400, 403, 200]
    limited = await client.post(SUBMIT, json=MAIL_JSON)
    assert limited.status == 429
    assert (await limited.json())["error"]["code"] == "rate_limited"
    invalid_too = await client.post(SUBMIT, json={**MAIL_JSON, "to": "not an address"})
    assert invalid_too.status == 429
    assert 1 <= int(invalid_too.headers["Retry-After"]) <= 3600
    assert await redis.xlen(keys.QUEUE) == 0


async def test_idempotent_repeats_and_conflicts_count_and_a_refusal_queues_nothing(make_client, redis):
    client = await make_client(rate_limit="3/hour")
    headers = {"Idempotency-Key": "form-1"}
    first = await (await client.post(SUBMIT, json=MAIL_JSON, headers=headers)).json()
    repeat = await (await client.post(SUBMIT, json=MAIL_JSON, headers=headers)).json()
    assert repeat["task_id"] == first["task_id"]
    conflict = await client.post(SUBMIT, json={**MAIL_JSON, "body": "changed"}, headers=headers)
    assert conflict.status == 409
    limited = await client.post(SUBMIT, json=MAIL_JSON, headers={"Idempotency-Key": "form-2"})
    assert limited.status == 429
    assert await redis.xlen(keys.QUEUE) == 1
    assert not await redis.exists(keys.idempotency(LOCAL_CLIENT, "form-2"))


async def test_rate_limit_windows_reset(make_client, redis):
    client = await make_client(rate_limit="2/second")
    deadline = time.monotonic() + 5
    accepted = 0
    while (response := await client.post(SUBMIT, json=MAIL_JSON)).status == 200:
        accepted += 1
        assert accepted <= 4, "2/second let more than two windows' worth through"
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    while (response := await client.post(SUBMIT, json=MAIL_JSON)).status == 429:
        assert time.monotonic() < deadline, "the window never reset"
        await asyncio.sleep(0.05)
    assert response.status == 200
    assert await redis.xlen(keys.QUEUE) == accepted + 1


async def test_wrong_api_keys_count_against_the_rate_limit(make_client):
    client = await make_client(api_keys=("k-123",), rate_limit="2/hour")
    wrong = {"Authorization": "Bearer guess"}
    statuses = [(await client.post(SUBMIT, json=MAIL_JSON, headers=wrong)).status for _ in range(3)]
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
    assert (await client.post(SUBMIT, json=MAIL_JSON)).status == 200
    assert await redis.xlen(keys.QUEUE) == 1


async def test_wrong_api_keys_count_but_a_wrong_content_type_does_not(make_client):
    client = await make_client(api_keys=("k-123",), rate_limit="2/hour")
    plain = {"Authorization": "Bearer guess", "Content-Type": "text/plain"}
    assert [(await client.post(SUBMIT, data=b"{}", headers=plain)).status for _ in range(5)] == [415] * 5
    wrong = {"Authorization": "Bearer guess"}
    statuses = [(await client.post(SUBMIT, json=MAIL_JSON, headers=wrong)).status for _ in range(3)]
    assert statuses == [401, 401, 429]
    right = {"Authorization": "Bearer k-123"}
    assert (await client.post(SUBMIT, json=MAIL_JSON, headers=right)).status == 429
