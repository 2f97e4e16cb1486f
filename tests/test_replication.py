"""`queued` only once a replica holds the mail (WAIT), on a real primary with a real replica."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from mailhub.forms.definitions import capture_contact_form
from mailhub.store import keys
from mailhub.store.redis_client import connect
from mailhub.web.app import create_app
from tests.helpers import MAIL_JSON, SUBMIT, settings_for
from tests.redis_servers import Replicated, replicated


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Replicated]:
    with replicated(tmp_path_factory.mktemp("replicated")) as pair:
        yield pair


@pytest.fixture
async def primary(servers) -> Any:
    client = connect(servers.primary.url)
    await client.flushall()  # the replica follows
    yield client
    await client.aclose()


@pytest.fixture
async def replica(servers) -> Any:
    client = connect(servers.replica.url)
    yield client
    await client.aclose()


async def waits(redis: Redis) -> int:
    """WAIT commands the server has run since its statistics were reset."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


@contextlib.contextmanager
def paused(servers: Replicated) -> Iterator[None]:
    """The replica stopped (SIGSTOP): connected, but confirming nothing."""
    assert servers.replica.process is not None
    pid = servers.replica.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_with_a_replica_queued_is_answered_once_the_replica_holds_the_task(
    aiohttp_client, servers, primary, replica, smtp
):
    client = await aiohttp_client(create_app(settings_for(smtp, redis_url=servers.primary.url)))
    await primary.config_resetstat()
    response = await client.post(SUBMIT, json=MAIL_JSON)
    assert response.status == 200
    task_id = (await response.json())["task_id"]
    assert await replica.hget(keys.task(task_id), "state") == "queued"
    assert await waits(primary) >= 1


async def test_an_unconfirmed_submit_is_503_and_its_repeat_returns_the_same_task(
    aiohttp_client, servers, primary, replica, smtp
):
    settings = settings_for(smtp, redis_url=servers.primary.url, redis_wait_timeout=0.3)
    client = await aiohttp_client(create_app(settings))
    headers = {"Idempotency-Key": "wait-1"}
    with paused(servers):
        started = time.monotonic()
        refused = await client.post(SUBMIT, json=MAIL_JSON, headers=headers)
        took = time.monotonic() - started
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"]["code"] == "unavailable"
        assert 0.3 <= took < 2
        again = await client.post(SUBMIT, json=MAIL_JSON, headers=headers)
        assert again.status == 503  # the replica still confirms nothing
    answer = await client.post(SUBMIT, json=MAIL_JSON, headers=headers)
    assert answer.status == 200
    task_id = (await answer.json())["task_id"]
    # One task: the one the first submit wrote, now on the replica.
    assert await primary.xlen(keys.QUEUE) == 1
    assert await replica.hget(keys.task(task_id), "state") == "queued"


async def test_the_forms_door_waits_for_the_replica_too(aiohttp_client, servers, primary, replica, smtp):
    settings = settings_for(
        smtp,
        redis_url=servers.primary.url,
        redis_wait_timeout=0.2,
        forms={"contact": capture_contact_form("owner@example.com")},
    )
    client = await aiohttp_client(create_app(settings))
    post = {"name": "Kim", "email": "kim@example.org", "message": "Hello"}
    headers = {"Idempotency-Key": "form-1"}
    with paused(servers):
        assert (await client.post("/api/v1/forms/contact", json=post, headers=headers)).status == 503
        # A resend is a repeat (no new CAPTCHA needed), and still waits for the replica.
        assert (await client.post("/api/v1/forms/contact", json=post, headers=headers)).status == 503
    answer = await client.post("/api/v1/forms/contact", json=post, headers=headers)
    assert answer.status == 200
    assert await replica.hget(keys.task((await answer.json())["task_id"]), "state") == "queued"
    assert await primary.xlen(keys.QUEUE) == 1


@pytest.mark.parametrize(("min_replicas", "status", "waited"), [(0, 200, False), (2, 503, True)])
async def test_redis_min_replicas_overrides_what_the_primary_has(
    aiohttp_client, servers, primary, smtp, min_replicas, status, waited
):
    settings = settings_for(
        smtp, redis_url=servers.primary.url, redis_min_replicas=min_replicas, redis_wait_timeout=0.2
    )
    client = await aiohttp_client(create_app(settings))
    await primary.config_resetstat()
    assert (await client.post(SUBMIT, json=MAIL_JSON)).status == status
    assert bool(await waits(primary)) is waited


async def test_without_replicas_a_submit_sends_no_wait(client, redis):
    await redis.config_resetstat()
    assert (await client.post(SUBMIT, json=MAIL_JSON)).status == 200
    assert await waits(redis) == 0
