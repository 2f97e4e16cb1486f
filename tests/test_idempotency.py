"""Idempotency-Key: a repeat queues once, another body is 409, keys are scoped per caller."""

from __future__ import annotations

import pytest

from mailhub.store import keys
from tests.helpers import LOCAL_CLIENT, MAIL_JSON, SUBMIT


async def test_same_idempotency_key_and_body_queue_once(client, redis):
    headers = {"Idempotency-Key": "form-4711"}
    first = await (await client.post(SUBMIT, json=MAIL_JSON, headers=headers)).json()
    again = await client.post(SUBMIT, json=MAIL_JSON, headers=headers)
    assert again.status == 200
    assert (await again.json())["task_id"] == first["task_id"]
    assert await redis.xlen(keys.QUEUE) == 1
    assert 0 < await redis.ttl(keys.idempotency(LOCAL_CLIENT, "form-4711")) <= 24 * 3600


async def test_same_idempotency_key_with_another_body_is_409(client, redis):
    headers = {"Idempotency-Key": "form-4712"}
    assert (await client.post(SUBMIT, json=MAIL_JSON, headers=headers)).status == 200
    conflict = await client.post(SUBMIT, json={**MAIL_JSON, "body": "changed"}, headers=headers)
    assert conflict.status == 409
    assert (await conflict.json())["error"]["code"] == "idempotency_conflict"
    assert await redis.xlen(keys.QUEUE) == 1


@pytest.mark.parametrize("key", ["x" * 256, "bad\tkey"])
async def test_malformed_idempotency_key_is_400(client, key):
    response = await client.post(SUBMIT, json=MAIL_JSON, headers={"Idempotency-Key": key})
    assert response.status == 400


async def test_an_idempotency_key_is_scoped_to_its_client(make_client, redis):
    client = await make_client(trusted_proxies=("127.0.0.1/32",))
    key = {"Idempotency-Key": "form-1"}

    async def submit(address: str, body: dict = MAIL_JSON):
        return await client.post(SUBMIT, json=body, headers={**key, "X-Forwarded-For": address})

    first = (await (await submit("198.51.100.1")).json())["task_id"]
    other = (await (await submit("198.51.100.2")).json())["task_id"]
    assert first != other
    assert (await (await submit("198.51.100.1")).json())["task_id"] == first
    assert (await submit("198.51.100.1", {**MAIL_JSON, "body": "changed"})).status == 409
    assert (await submit("198.51.100.3", {**MAIL_JSON, "body": "changed"})).status == 200
    assert await redis.xlen(keys.QUEUE) == 3


async def test_an_idempotency_key_is_scoped_to_its_api_key(make_client, redis):
    client = await make_client(api_keys=("k-1", "k-2"), trusted_proxies=("127.0.0.1/32",))

    async def submit(api_key: str, address: str) -> str:
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Idempotency-Key": "job-7",
            "X-Forwarded-For": address,
        }
        return (await (await client.post(SUBMIT, json=MAIL_JSON, headers=headers)).json())["task_id"]

    first = await submit("k-1", "198.51.100.1")
    assert await submit("k-2", "198.51.100.1") != first
    # One API key is one caller, whichever of its servers sends.
    assert await submit("k-1", "198.51.100.9") == first
    assert await redis.xlen(keys.QUEUE) == 2
