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
from tests.helpers import MAIL_JSON, SUBMIT, enqueue, result_of
from tests.smtp_server import Fault

pytestmark = pytest.mark.performance


def request(n: int) -> EmailRequest:
    return EmailRequest(
        to="user@example.com", subject=f"perf {n:04d} — 안녕", body="Hi {username}", username="Kim"
    )


async def results(store: TaskStore, task_ids: list[str]) -> list[dict[str, Any]]:
    return [await result_of(store, task_id) for task_id in task_ids]


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n  [performance] {line}")


async def test_single_and_concurrent_submits(client, store, capsys):
    started = time.perf_counter()
    response = await client.post(SUBMIT, json=MAIL_JSON)
    single_ms = (time.perf_counter() - started) * 1000
    assert response.status == 200
    count, concurrency = 400, 32
    lanes = iter(range(count))

    async def lane() -> list[str]:
        ids = []
        for n in lanes:
            r = await client.post(
                SUBMIT,
                json={**MAIL_JSON, "subject": f"s{n}"},
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


async def test_delivery_reuses_connections_and_delivers_everything(store, settings, smtp, drain, capsys):
    count = 300
    task_ids = [await enqueue(store, request(n)) for n in range(count)]
    started = time.perf_counter()
    await drain(timeout=60, worker_concurrency=32)
    elapsed = time.perf_counter() - started
    documents = await results(store, task_ids)
    assert Counter(doc["status"] for doc in documents) == {"success": count}
    mails = await smtp.handler.wait_for_count(count)
    assert sorted(m.message["Subject"] for m in mails) == sorted(request(n).subject for n in range(count))
    assert smtp.auth_successes <= settings.smtp_pool_size * 2
    show(
        capsys,
        f"delivery: {count} queued mails drained in {elapsed:.2f} s = {count / elapsed:.0f} mails/s "
        f"over {smtp.auth_successes} SMTP connections",
    )


async def test_retry_storm_drains_with_the_default_backoff(store, smtp, drain, capsys):
    count = 50
    smtp.handler.faults.extend([Fault.reply_data("451 4.3.0 try again later")] * count)
    task_ids = [await enqueue(store, request(n)) for n in range(count)]
    started = time.perf_counter()
    await drain(timeout=60, worker_concurrency=32, retry_base_delay=2.0, retry_max_delay=600.0)
    elapsed = time.perf_counter() - started
    documents = await results(store, task_ids)
    assert Counter((doc["status"], doc["attempts"]) for doc in documents) == {("success", 2): count}
    assert len(await smtp.handler.wait_for_count(count)) == count
    show(
        capsys,
        f"retry storm: {count} mails each refused once, drained in {elapsed:.2f} s (first retry after 1-2 s)",
    )
