"""Tasks an earlier mailhub left in Redis: read, delivered and listed by this one.

The earlier layout (as mailhub wrote it before results were rendered from
fields): the hash repeats `task_id`, has `created_at`, a `seq` counter, the
rendered `doc` and a timeline of JSON lines; index members and the queue
entry name the task by its UUID.
"""

from __future__ import annotations

import json
import uuid

from redis.asyncio import Redis

from mailhub.store import keys
from mailhub.store.addresses import address_digest
from mailhub.store.admin import Resend, TaskAdmin
from mailhub.store.index import TaskIndex
from mailhub.store.queue import WorkQueue
from tests.helpers import result_of
from tests.smtp_server import Fault

ACCEPTED = "2026-01-02T03:04:05.678Z"


async def old_queued_task(redis: Redis, to: str = "old@example.com", *, retrying: bool = False) -> str:
    """A queued task exactly as the earlier layout stored it, on the queue and in the indexes;
    `retrying`: waiting in the retries set instead, due now."""
    task_id = str(uuid.uuid4())
    key = keys.task(task_id)
    doc = {"task_id": task_id, "to": to, "status": "pending", "attempts": 0, "seq": 1}
    doc |= {"event": "queued", "at": ACCEPTED}
    line = {"seq": 1, "at": ACCEPTED, "attempts": 0, "event": "queued"}
    digest = address_digest(to)
    await redis.hset(
        key,
        mapping={
            "task_id": task_id,
            "to": to,
            "subject": "Before the upgrade",
            "body": "{username}, hello",
            "username": "Kim",
            "message_id": f"<1767323045.123.456.{task_id}@example.com>",
            "created_ts": 4102444800,  # the queue age counts from here: far ahead, never too old
            "created_at": ACCEPTED,
            "state": "queued",
            "attempts": 0,
            "people": digest,
            "seq": 1,
            "doc": json.dumps(doc),
            "timeline": json.dumps(line) + "\n",
        },
    )
    if retrying:
        await redis.hset(key, "state", "retrying")
        await redis.zadd(keys.RETRIES, {task_id: 0})
    else:
        await WorkQueue(redis).ensure_group()
        await redis.hset(key, "entry", await redis.xadd(keys.QUEUE, {"task_id": task_id}))
    score = (await redis.time())[0] * 1000
    await redis.zadd(keys.status_index("pending"), {task_id: score})
    await redis.zadd(keys.address_index(digest), {task_id: score})
    return task_id


async def test_an_old_task_is_served_as_stored_then_delivered_and_rendered(store, redis, drain, smtp):
    task_id = await old_queued_task(redis)
    assert await result_of(store, task_id) == json.loads(await redis.hget(keys.task(task_id), "doc"))
    await drain()
    [mail] = smtp.handler.messages
    assert mail.message["Subject"] == "Before the upgrade"
    assert mail.message["Message-ID"].strip() == f"<1767323045.123.456.{task_id}@example.com>"
    document = await result_of(store, task_id)
    assert (document["status"], document["event"], document["seq"], document["attempts"]) == (
        "success",
        "success",
        3,
        1,
    )
    stored = await redis.hgetall(keys.task(task_id))
    assert "doc" not in stored and "seq" not in stored  # rendered from its fields from now on


async def test_an_old_task_is_listed_with_its_whole_timeline(store, redis, drain):
    task_id = await old_queued_task(redis)
    index = TaskIndex(redis, message_id_domain=store.message_id_domain)
    assert [t["task_id"] for t in (await index.page(limit=10, status="pending")).tasks] == [task_id]
    await drain()
    assert [t["task_id"] for t in (await index.page(limit=10, status="success")).tasks] == [task_id]
    assert [t["task_id"] for t in (await index.page(limit=10, status="pending")).tasks] == []
    assert [t["task_id"] for t in (await index.page(limit=10, address="old@example.com")).tasks] == [task_id]
    task = await index.task(task_id)
    assert task is not None
    assert task["created_at"] == ACCEPTED
    assert [(t["seq"], t["event"]) for t in task["timeline"]] == [
        (1, "queued"),
        (2, "attempt"),
        (3, "success"),
    ]
    assert task["delivered_at"] == task["timeline"][-1]["at"]


async def test_an_old_retry_is_delivered(store, redis, drain, smtp):
    task_id = await old_queued_task(redis, retrying=True)
    await store.queue.ensure_group()
    await drain()
    assert (await result_of(store, task_id))["status"] == "success"
    assert len(smtp.handler.messages) == 1


async def test_an_old_failed_task_is_re_sent_and_an_old_address_erased(store, redis, drain, smtp):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    task_id = await old_queued_task(redis)
    await drain()
    assert (await result_of(store, task_id))["status"] == "failed"
    other = await old_queued_task(redis, "other@example.com")
    admin = TaskAdmin(redis)
    assert await admin.resend(task_id) is Resend.REQUEUED
    await drain()
    assert (await result_of(store, task_id))["status"] == "success"
    assert await admin.erase_address("old@example.com") == 1
    assert await store.result(task_id) is None
    assert await redis.zrange(keys.status_index("success"), 0, -1) == [other]
    assert not await redis.exists(keys.address_index(address_digest("old@example.com")))
