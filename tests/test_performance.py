"""Quick versions of the benchmarks in bench/: correctness checked, figures printed.

Run with `pytest -m performance -s`. Nothing here fails on a wall-clock number:
the machine is shared and noisy; bench/ measures against baselines.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from mailhub.store.tasks import EmailRequest, TaskStore
from tests.conftest import running_worker, settings_for, wait_for_result
from tests.smtp_server import Fault

pytestmark = pytest.mark.performance

BODY = {
    "to": "user@example.com",
    "subject": "Hello",
    "body": "{username}님 안녕하세요!",
    "username": "홍길동",
}


def request(n: int) -> EmailRequest:
    return EmailRequest(
        to="user@example.com", subject=f"perf {n:04d} — 안녕", body="Hi {username}", username="Kim"
    )


async def wait_all(store: TaskStore, task_ids: list[str], timeout: float) -> list[dict[str, Any]]:
    """Every task's terminal result, within one overall `timeout`."""
    async with asyncio.timeout(timeout):
        return [await wait_for_result(store, task_id, timeout=timeout) for task_id in task_ids]


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n  [performance] {line}")


async def test_single_and_concurrent_submits(client, store, capsys):
    started = time.perf_counter()
    response = await client.post("/api/v1/email/received", json=BODY)
    single_ms = (time.perf_counter() - started) * 1000
    assert response.status == 200
    count, concurrency = 400, 32
    lanes = iter(range(count))

    async def lane() -> list[str]:
        ids = []
        for n in lanes:
            r = await client.post(
                "/api/v1/email/received",
                json={**BODY, "subject": f"s{n}"},
                headers={"Idempotency-Key": f"perf-{n}"},
            )
            assert r.status == 200
            ids.append((await r.json())["task_id"])
        return ids

    started = time.perf_counter()
    task_ids = [t for ids in await asyncio.gather(*(lane() for _ in range(concurrency))) for t in ids]
    elapsed = time.perf_counter() - started
    assert len(set(task_ids)) == count
    results = [await store.result(t) for t in task_ids]
    assert all(results), "an accepted submit left no task behind"
    show(
        capsys,
        f"submit: single {single_ms:.1f} ms; {count} at {concurrency} concurrent: "
        f"{count / elapsed:.0f} req/s (in-process test client)",
    )


async def test_delivery_reuses_connections_and_delivers_everything(store, settings, smtp, capsys):
    count = 300
    async with running_worker(store, settings, concurrency=32):
        started = time.perf_counter()
        task_ids = [await store.enqueue(request(n)) for n in range(count)]
        documents = await wait_all(store, task_ids, timeout=60)
        elapsed = time.perf_counter() - started
    assert Counter(doc["status"] for doc in documents) == {"success": count}
    mails = await smtp.handler.wait_for_count(count)
    assert sorted(m.message["Subject"] for m in mails) == sorted(request(n).subject for n in range(count))
    assert smtp.auth_successes <= settings.smtp_pool_size * 2
    show(
        capsys,
        f"delivery: {count} mails in {elapsed:.2f} s = {count / elapsed:.0f} mails/s "
        f"over {smtp.auth_successes} SMTP connections",
    )


async def test_retry_storm_drains_with_the_default_backoff(store, valkey, smtp, capsys):
    count = 50
    smtp.handler.faults.extend([Fault.reply_data("451 4.7.1 try again later")] * count)
    settings = settings_for(smtp, redis_url=valkey.url, retry_base_delay=2.0, retry_max_delay=600.0)
    async with running_worker(store, settings, concurrency=32):
        started = time.perf_counter()
        task_ids = [await store.enqueue(request(n)) for n in range(count)]
        documents = await wait_all(store, task_ids, timeout=60)
        elapsed = time.perf_counter() - started
    assert Counter((doc["status"], doc["attempts"]) for doc in documents) == {("success", 2): count}
    assert len(await smtp.handler.wait_for_count(count)) == count
    show(
        capsys,
        f"retry storm: {count} mails each refused once, drained in {elapsed:.2f} s (first retry after 1-2 s)",
    )
