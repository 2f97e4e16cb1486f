"""The owner's store: the task index, its paging and trimming, the timeline, re-send,
delete and erasure, against a real Valkey (tasks moved by `TaskDriver`)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from mailhub import reasons
from mailhub.store import keys
from mailhub.store.addresses import address_digest
from mailhub.store.admin import Resend, TaskAdmin
from mailhub.store.index import Cursor, TaskIndex
from mailhub.store.members import member
from mailhub.store.overview import overview
from mailhub.store.tasks import EmailRequest, TaskStore
from mailhub.store.timeline import TIMELINE_BYTES, entries
from tests.driver import TaskDriver
from tests.helpers import MAIL


@pytest.fixture
def index(redis, store) -> TaskIndex:
    return TaskIndex(redis, message_id_domain=store.message_id_domain)


@pytest.fixture
def admin(redis) -> TaskAdmin:
    return TaskAdmin(redis)


async def failed_task(store: TaskStore, to: str = "user@example.com") -> str:
    driver = TaskDriver(store)
    await driver.enqueue(EmailRequest(to=to, subject="Hello", body="Hi"))
    await driver.begin_attempt()
    await driver.fail()
    return driver.task_id


async def after_this_millisecond(redis) -> None:  # type: ignore[no-untyped-def]
    """Return once Redis's clock has moved on to another millisecond."""

    def ms(clock: tuple[int, int]) -> int:
        return clock[0] * 1000 + clock[1] // 1000

    start = ms(await redis.time())
    deadline = time.monotonic() + 1
    while ms(await redis.time()) == start:
        assert time.monotonic() < deadline, "Redis's clock stands still"
        await asyncio.sleep(0.001)


async def ids(index: TaskIndex, **query) -> list[str]:  # type: ignore[no-untyped-def]
    return [task["task_id"] for task in (await index.page(limit=100, **query)).tasks]


async def test_a_task_is_filed_under_its_status_and_address_as_it_moves(store, redis, index):
    driver = TaskDriver(store)
    task_id = await driver.enqueue(
        EmailRequest(
            to="A@Example.com", subject="Hi", body="x", reply_to="v@example.org", shown_to="…@example.com"
        )
    )
    assert await ids(index, status="pending") == [task_id]
    assert await ids(index, address="a@example.COM") == [task_id]
    assert await ids(index, address="v@example.org") == [task_id]
    await driver.run_to_success_after_one_retry()
    assert await ids(index, status="pending") == []
    assert await ids(index, status="success") == [task_id]
    [task] = (await index.page(limit=10, address="a@example.com", status="success")).tasks
    assert task["status"] == "success" and task["subject"] == "Hi" and task["attempts"] == 2
    assert task["to"] == "A@Example.com"  # the owner sees the recipient the public document masks
    assert task["detail"] == "451 4.7.1 try again later"  # the last error, though it was delivered
    index_ttl = await redis.ttl(keys.address_index(address_digest("a@example.com")))
    assert 0 < index_ttl <= store.retention


async def test_paging_returns_every_task_once_newest_first_even_with_equal_scores(store, redis, index, admin):
    failed = [await failed_task(store) for _ in range(12)]
    await admin.resend_failed(0, 100)  # one script: all 12 enter `pending` in the same millisecond
    await after_this_millisecond(redis)
    others = [await TaskDriver(store).enqueue() for _ in range(5)]
    seen: list[str] = []
    cursor: Cursor | None = None
    pages = 0
    while True:
        page = await index.page(limit=5, cursor=cursor)
        seen += [task["task_id"] for task in page.tasks]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 4
    assert sorted(seen) == sorted(failed + others)
    assert set(seen[:5]) == set(others)  # newest first (ties within a millisecond by id)
    scores = [await redis.zscore(keys.status_index("pending"), member(task_id)) for task_id in failed]
    assert len(set(scores)) == 1


async def test_a_cursor_is_parsed_strictly():
    cursor = Cursor(1733280000123, "7d0c1c1e-8d6a-4c1e-9a0e-3f7e1b2a4c5d")
    assert Cursor.parse(cursor.encode()) == cursor
    for bad in ["", "1:2", "x:7d0c1c1e-8d6a-4c1e-9a0e-3f7e1b2a4c5d", "1" * 16 + ":" + cursor.task_id]:
        with pytest.raises(ValueError):
            Cursor.parse(bad)


async def test_the_timeline_lists_every_transition_with_the_error_detail(store, index):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    await driver.begin_attempt()
    await driver.retry("451 4.7.1 greylisted")
    await driver.begin_attempt()
    await driver.fail()
    task = await index.task(task_id)
    assert task is not None
    assert [(t["seq"], t["event"], t["attempts"]) for t in task["timeline"]] == [
        (1, "queued", 0),
        (2, "attempt", 1),
        (3, "retry", 1),
        (4, "attempt", 2),
        (5, "failed", 2),
    ]
    assert task["timeline"][2]["detail"] == "451 4.7.1 greylisted"
    assert "550 5.1.1 no such user" in task["timeline"][4]["detail"]
    assert (task["body"], task["username"]) == (MAIL.body, MAIL.username)


async def test_a_long_deferred_task_keeps_a_bounded_timeline_with_its_first_line(store, redis, index):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    for _ in range(80):  # sending paused: the attempt is given back, again and again
        attempt = await driver.begin_attempt()
        await store.retry_later(
            attempt, 0.0, reasons.PAUSED, "sending paused: 535 login refused", counted=False
        )
    timeline = await redis.hget(keys.task(task_id), "timeline")
    assert len(timeline.encode()) <= TIMELINE_BYTES
    lines = entries(timeline)
    assert lines[0]["event"] == "queued"
    assert lines[-1]["seq"] == 161 and lines[-1]["event"] == "retry"
    assert [line["seq"] for line in lines[1:]] == list(range(lines[1]["seq"], 162))
    assert (await index.task(task_id))["timeline"][0]["seq"] == 1  # type: ignore[index]


async def test_finished_entries_are_trimmed_when_their_hash_expires(redis, settings):
    short = TaskStore.from_settings(redis, settings)
    short.retention = 1
    index = TaskIndex(redis, message_id_domain=short.message_id_domain)
    old = await failed_task(short, "old@example.com")
    deadline = time.monotonic() + 5
    while await redis.exists(keys.task(old)):
        assert time.monotonic() < deadline, "the failed task's hash did not expire"
        await asyncio.sleep(0.05)
    newer = await failed_task(short, "old@example.com")
    assert await redis.zrange(keys.status_index("failed"), 0, -1) == [member(newer)]
    assert await redis.zrange(keys.address_index(address_digest("old@example.com")), 0, -1) == [member(newer)]
    assert await ids(index, status="failed") == [newer]


async def test_resend_requeues_only_a_failed_task_with_a_fresh_budget(store, redis, admin, index):
    task_id = await failed_task(store)
    before = await redis.hgetall(keys.task(task_id))
    assert await admin.resend(task_id) is Resend.REQUEUED
    after = await redis.hgetall(keys.task(task_id))
    assert after["state"] == "queued" and after["attempts"] == "0" and after["resends"] == "1"
    assert after["message_id"] == before["message_id"]
    assert "reason" not in after and await redis.ttl(keys.task(task_id)) == -1
    doc = json.loads(await store.result(task_id) or "{}")
    assert (doc["status"], doc["event"], doc["seq"], doc["attempts"]) == ("pending", "requeued", 4, 0)
    assert await ids(index, status="pending") == [task_id] and await ids(index, status="failed") == []
    assert await admin.resend(task_id) is Resend.NOT_FAILED
    assert await admin.resend("7d0c1c1e-8d6a-4c1e-9a0e-3f7e1b2a4c5d") is Resend.UNKNOWN
    assert await redis.xlen(keys.QUEUE) == 1


async def test_bulk_resend_takes_failures_since_a_time_in_bounded_batches(store, redis, admin):
    early = [await failed_task(store) for _ in range(2)]
    await after_this_millisecond(redis)
    seconds, micros = await redis.time()
    since = seconds + micros / 1e6
    late = [await failed_task(store) for _ in range(3)]
    first = await admin.resend_failed(since, limit=2)
    assert (first.requeued, first.remaining) == (2, 1)
    second = await admin.resend_failed(since, limit=2)
    assert (second.requeued, second.remaining) == (1, 0)
    states = {t: await redis.hget(keys.task(t), "state") for t in early + late}
    assert states == {**{t: "failed" for t in early}, **{t: "queued" for t in late}}


async def test_overview_counts_the_queue_outcomes_and_chart(store, redis):
    for _ in range(2):
        await failed_task(store)
    driver = TaskDriver(store)
    await driver.enqueue()
    await driver.run_to_success_after_one_retry()
    retrying = TaskDriver(store)
    await retrying.enqueue()
    await retrying.begin_attempt()
    await store.retry_later(retrying.attempt, 60, reasons.TEMPORARY, "451 later")  # type: ignore[arg-type]
    await TaskDriver(store).enqueue()
    view = await overview(redis)
    assert view["tasks"]["last_hour"] == {"pending": 2, "success": 1, "failed": 2}
    assert view["tasks"]["total"] == view["tasks"]["last_day"] == view["tasks"]["last_hour"]
    assert view["queue"]["retries_waiting"] == 1 and view["queue"]["pending"] == 2
    assert view["queue"]["waiting"] == 1  # the queued one; the retry waits in the retries set
    assert 0 <= view["queue"]["oldest_pending_seconds"] < 10
    assert sum(view["per_minute"]["success"]) == 1 and sum(view["per_minute"]["failed"]) == 2
    assert len(view["per_minute"]["failed"]) == 60
    assert view["per_minute"]["failed"][-1] + view["per_minute"]["failed"][-2] == 2
    assert [w["name"] for w in view["workers"]] == ["driver"]


async def test_a_decoy_is_never_listed_but_erasure_reaches_it(store, redis, index, admin):
    decoy = await store.accept(EmailRequest(to="Bot@example.com", subject="x", body="y"), decoy=True)
    assert await ids(index) == [] and await ids(index, address="bot@example.com") == []
    assert await admin.erase_address("bot@example.com") == 1
    assert await redis.keys("*") == []
    assert (await index.page(limit=10)).tasks == [] and decoy.created


async def test_the_message_id_shown_before_the_first_attempt_is_the_one_it_fixes(store, redis, index):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    shown = (await index.task(task_id) or {})["message_id"]
    assert shown == f"<{task_id}@{store.message_id_domain}>"
    assert not await redis.hexists(keys.task(task_id), "message_id")  # a queued mail does not store it
    attempt = await driver.begin_attempt()
    await driver.retry()
    assert (attempt.message_id, (await driver.begin_attempt()).message_id) == (shown, shown)
    assert await redis.hget(keys.task(task_id), "message_id") == shown
