"""Fault injection on real parts: a worker killed mid-run, Redis going away."""

from __future__ import annotations

import collections
import signal
import time

import pytest

from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import EmailRequest, TaskStore
from mailhub.web.app import create_app
from tests.helpers import (
    MAIL_JSON,
    RESULT,
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


async def _statuses(store: TaskStore, task_ids: list[str]) -> collections.Counter:
    return collections.Counter([(await result_of(store, t))["status"] for t in task_ids])


async def _all_done(store: TaskStore, task_ids: list[str]) -> bool:
    return not (await _statuses(store, task_ids))["pending"]


async def test_worker_killed_mid_run_loses_nothing_and_resends_only_in_flight(
    tmp_path, valkey, redis, store, smtp
):
    total, concurrency = 500, 16
    env = smtp_env(
        smtp, REDIS_URL=valkey.url, WORKER_CONCURRENCY=str(concurrency), CLAIM_TIMEOUT="2", SMTP_TIMEOUT="1"
    )
    task_ids = [
        await enqueue(store, EmailRequest(to=f"u{n}@example.com", subject=f"crash {n}", body="b"))
        for n in range(total)
    ]
    worker = MailhubProcess("worker", cwd=tmp_path, env=env, web=False).wait_ready()
    try:
        await smtp.handler.wait_for_count(150, timeout=60)
        worker.stop(signal.SIGKILL)
        recorded = {t for t in task_ids if (await result_of(store, t))["status"] == "success"}
        assert len(recorded) < total, "the run ended before the kill: nothing was tested"
        with MailhubProcess("worker", cwd=tmp_path, env=env, web=False):
            await eventually(lambda: _all_done(store, task_ids), timeout=60, interval=0.1, what="all done")
    finally:
        worker.stop(signal.SIGKILL)
    assert await _statuses(store, task_ids) == {"success": total}
    sent = collections.Counter(m.message["Message-ID"] for m in smtp.handler.messages)
    assert len(sent) == total  # none lost
    duplicated = {mid for mid, n in sent.items() if n > 1}
    assert sum(sent.values()) - total <= concurrency
    recorded_ids = {(await result_of(store, t))["task_id"] for t in recorded}
    assert not any(task_id in mid for mid in duplicated for task_id in recorded_ids)


@pytest.fixture
def own_valkey(tmp_path):
    """A persistent Valkey this test may stop and start again on the same port."""
    server = EmbeddedRedis(tmp_path / "valkey", port=free_port(), persist=True)
    server.start()
    yield server
    server.stop()


async def test_redis_outage_answers_503_fast_and_recovers_by_itself(aiohttp_client, own_valkey, smtp):
    settings = settings_for(smtp, redis_url=own_valkey.url)
    client = await aiohttp_client(create_app(settings))
    redis = connect(own_valkey.url)
    store = TaskStore.from_settings(redis, settings)
    async with running_worker(store, settings):
        before = [(await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"] for _ in range(5)]
        own_valkey.stop()
        for request in (
            client.post(SUBMIT, json=MAIL_JSON),
            client.get(RESULT, params={"task_id": before[0]}),
            client.get("/readyz"),
        ):
            started = time.monotonic()
            response = await request
            elapsed = time.monotonic() - started
            assert response.status == 503
            answer = await response.json()
            assert (
                answer.get("error", {}).get("code") == "unavailable"
                or "Redis is unreachable" in answer["reason"]
            )
            assert elapsed < 1.0, f"took {elapsed:.2f}s"
        own_valkey.start()
        after = []
        deadline = time.monotonic() + 20
        while len(after) < 5:
            response = await client.post(SUBMIT, json=MAIL_JSON)
            if response.status == 200:
                after.append((await response.json())["task_id"])
            assert time.monotonic() < deadline, "submits did not recover"
        await eventually(lambda: _all_done(store, before + after), timeout=30, what="all done")
        assert await _statuses(store, before + after) == {"success": 10}
    await redis.aclose()
    assert len(await smtp.handler.wait_for_count(10)) >= 10
