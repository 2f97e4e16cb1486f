"""Redis losing data under a running mailhub: the queue's group comes back, orphans never loop."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from prometheus_client import REGISTRY

from mailhub.store import keys
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from tests.helpers import (
    MAIL_JSON,
    SUBMIT,
    enqueue,
    eventually,
    free_port,
    result_of,
    running_worker,
    settings_for,
    smtp_env,
)
from tests.processes import MailhubProcess

GROUP_MISSING = "worker group was missing in Redis and has been created again"


def recreated() -> float:
    return REGISTRY.get_sample_value("mailhub_queue_group_recreated_total") or 0.0


async def delivered(smtp, task_id: str) -> bool:
    return any(task_id in m.message["Message-ID"] for m in smtp.handler.messages)


async def test_after_a_flushall_every_worker_carries_on_and_one_says_so(store, redis, settings, smtp, caplog):
    caplog.set_level(logging.WARNING, logger="mailhub.delivery.worker")
    before = recreated()
    async with running_worker(store, settings), running_worker(store, settings):
        first = await enqueue(store)
        await eventually(lambda: delivered(smtp, first), what="the first mail delivered")
        await redis.flushall()
        second = await enqueue(store)
        accepted = time.monotonic()
        await eventually(lambda: delivered(smtp, second), timeout=5, what="delivered after the flush")
        took = time.monotonic() - accepted
        third = await enqueue(store)  # both workers read again, neither needs another recovery
        await eventually(lambda: delivered(smtp, third), timeout=5, what="the next mail delivered")
    assert (await result_of(store, second))["status"] == "success"
    assert took < 5
    assert recreated() - before == 1
    assert caplog.text.count(GROUP_MISSING) == 1
    assert "queued before that may have been lost" in caplog.text


async def test_an_entry_whose_task_is_gone_is_dropped_with_a_log_line(store, redis, drain, caplog):
    task_id = await enqueue(store)
    await redis.delete(keys.task(task_id))
    await drain(timeout=5)
    assert await redis.xlen(keys.QUEUE) == 0
    assert f"task {task_id}: its queue entry has no task in Redis; entry dropped" in caplog.text


@pytest.mark.parametrize("outcome", ["succeed", "retry_later", "fail"])
async def test_an_outcome_counts_when_a_failover_lost_the_start_of_its_attempt(store, redis, outcome):
    """The new primary has the task still queued (the attempt's start never reached it): the
    outcome is recorded and its entry removed, rather than the entry removed and the task left
    waiting for nothing."""
    await store.queue.ensure_group()
    task_id = await enqueue(store)
    [entry] = await store.queue.read_new("w", 1, block=None)
    attempt = await store.begin_attempt(entry)
    assert attempt is not None
    # What a replica that missed the attempt's start holds.
    await redis.hset(keys.task(task_id), mapping={"state": "queued", "attempts": 0})
    if outcome == "succeed":
        await store.succeed(attempt)
    elif outcome == "fail":
        await store.fail(attempt, "refused", "550 no")
    else:
        await store.retry_later(attempt, 60, "temporary failure, retrying", "451 later")
    document = await result_of(store, task_id)
    wanted = {"succeed": "success", "fail": "failed", "retry_later": "pending"}[outcome]
    assert (document["status"], document["attempts"]) == (wanted, 1)
    assert await redis.xlen(keys.QUEUE) == 0


@pytest.fixture
def volatile_valkey(tmp_path):
    """A Valkey without persistence this test restarts on the same port: it comes back empty."""
    server = EmbeddedRedis(tmp_path / "valkey", port=free_port(), persist=False)
    server.start()
    yield server
    server.stop()


async def test_a_redis_restarted_empty_under_mailhub_delivers_the_next_submit_within_5_s(
    tmp_path, volatile_valkey, smtp
):
    env = smtp_env(smtp, REDIS_URL=volatile_valkey.url)
    redis = connect(volatile_valkey.url)
    store = TaskStore.from_settings(redis, settings_for(smtp))
    try:
        with MailhubProcess("all", cwd=tmp_path, env=env) as mailhub:
            async with aiohttp.ClientSession(mailhub.url) as session:
                first = await _submit(session)
                await eventually(lambda: delivered(smtp, first), what="the first mail delivered")
                volatile_valkey.stop()
                volatile_valkey.start()
                second = await _submit(session)
                accepted = time.monotonic()
                await eventually(lambda: delivered(smtp, second), timeout=5, what="delivered, restarted")
                took = time.monotonic() - accepted
                await eventually(lambda: _success(store, second), timeout=5, what="recorded as success")
                metrics = await (await session.get("/metrics")).text()
    finally:
        await redis.aclose()
    print(f"\nempty restart: the next submit delivered {took:.2f} s after it was accepted")
    assert mailhub.log.count(GROUP_MISSING) == 1
    assert "mailhub_queue_group_recreated_total 1.0" in metrics


async def _submit(session: aiohttp.ClientSession, timeout: float = 10.0) -> str:
    """Submit until answered 200 (503 while Redis is away); the task id."""
    deadline = time.monotonic() + timeout
    while True:
        async with session.post(SUBMIT, json=MAIL_JSON) as response:
            if response.status == 200:
                return (await response.json())["task_id"]
            assert response.status == 503, await response.text()
        assert time.monotonic() < deadline, "submits did not come back"
        await asyncio.sleep(0.05)


async def _success(store: TaskStore, task_id: str) -> bool:
    return (await result_of(store, task_id))["status"] == "success"
