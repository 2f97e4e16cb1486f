"""Fault injection on real parts: a worker killed mid-run, Redis going away."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time

import pytest

from mailhub.store.embedded_valkey import EmbeddedRedis, free_port
from mailhub.store.redis_client import connect
from mailhub.store.tasks import EmailRequest, TaskStore
from mailhub.web.app import create_app
from tests.conftest import running_worker, settings_for
from tests.processes import MailhubProcess


async def _statuses(store: TaskStore, task_ids: list[str]) -> collections.Counter:
    documents = [json.loads(await store.result(t)) for t in task_ids]
    return collections.Counter(d["status"] for d in documents)


async def _wait_all_done(store: TaskStore, task_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (counts := await _statuses(store, task_ids))["pending"]:
        assert time.monotonic() < deadline, f"still not done after {timeout}s: {counts}"
        await asyncio.sleep(0.1)


async def test_worker_killed_mid_run_loses_nothing_and_resends_only_in_flight(
    tmp_path, valkey, redis, store, smtp
):
    total, concurrency = 500, 16
    env = {
        "REDIS_URL": valkey.url,
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "SMTP_USER": smtp.user,
        "SMTP_PASS": smtp.password,
        "SSL_CERT_FILE": str(smtp.ca_file),
        "ALLOWED_RECIPIENTS": "@example.com",
        "MAIL_FROM": "noreply@example.com",
        "WORKER_CONCURRENCY": str(concurrency),
        "CLAIM_TIMEOUT": "2",
        "SMTP_TIMEOUT": "1",
    }
    task_ids = [
        await store.enqueue(EmailRequest(to=f"u{n}@example.com", subject=f"crash {n}", body="b"))
        for n in range(total)
    ]
    worker = MailhubProcess("worker", cwd=tmp_path, env=env, web=False).wait_ready()
    try:
        await smtp.handler.wait_for_count(150, timeout=60)
        worker.stop(signal.SIGKILL)
        recorded = {t for t in task_ids if json.loads(await store.result(t))["status"] == "success"}
        assert len(recorded) < total, "the run ended before the kill: nothing was tested"
        with MailhubProcess("worker", cwd=tmp_path, env=env, web=False):
            await _wait_all_done(store, task_ids, timeout=60)
    finally:
        worker.stop(signal.SIGKILL)
    assert await _statuses(store, task_ids) == {"success": total}
    sent = collections.Counter(m.message["Message-ID"] for m in smtp.handler.messages)
    assert len(sent) == total  # none lost
    duplicated = {mid for mid, n in sent.items() if n > 1}
    assert sum(sent.values()) - total <= concurrency
    recorded_ids = {json.loads(await store.result(t))["task_id"] for t in recorded}
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
    mail = {"to": "a@example.com", "subject": "outage", "body": "b"}
    async with running_worker(store, settings):
        before = [
            (await (await client.post("/api/v1/email/received", json=mail)).json())["task_id"]
            for _ in range(5)
        ]
        own_valkey.stop()
        for request in (
            client.post("/api/v1/email/received", json=mail),
            client.get("/api/v1/email/result", params={"task_id": before[0]}),
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
            response = await client.post("/api/v1/email/received", json=mail)
            if response.status == 200:
                after.append((await response.json())["task_id"])
            assert time.monotonic() < deadline, "submits did not recover"
        await _wait_all_done(store, before + after, timeout=30)
        assert await _statuses(store, before + after) == {"success": 10}
    await redis.aclose()
    assert len(await smtp.handler.wait_for_count(10)) >= 10
