"""What a task costs in Redis: its hash stays in the compact encoding, queued and finished.

The embedded Valkey keeps hashes with values up to `HASH_MAX_LISTPACK_VALUE`
bytes as one listpack; a task with a longer value takes the table encoding
and still works.
"""

from __future__ import annotations

import json

from mailhub import reasons
from mailhub.store import keys
from mailhub.store.embedded_valkey import HASH_MAX_LISTPACK_VALUE
from mailhub.store.tasks import EmailRequest
from tests.driver import TaskDriver
from tests.helpers import MAIL


async def test_a_typical_task_hash_stays_a_listpack_queued_and_finished(store, redis):
    driver = TaskDriver(store)
    task_id = await driver.enqueue(MAIL)
    key = keys.task(task_id)
    assert await redis.object("encoding", key) == "listpack"
    await driver.run_to_success_after_one_retry()
    assert await redis.object("encoding", key) == "listpack"


async def test_a_long_deferral_keeps_the_hash_a_listpack(store, redis):
    driver = TaskDriver(store)
    task_id = await driver.enqueue(MAIL)
    for _ in range(80):  # sending paused: the timeline grows to its bound
        attempt = await driver.begin_attempt()
        await store.retry_later(
            attempt, 0.0, reasons.PAUSED, "sending paused: 535 " + "x" * 400, counted=False
        )
    assert await redis.object("encoding", keys.task(task_id)) == "listpack"


async def test_a_body_past_the_limit_takes_the_larger_encoding_and_is_delivered(store, redis, drain, smtp):
    body = "y" * (HASH_MAX_LISTPACK_VALUE + 1)
    task_id = (await store.accept(EmailRequest(to="user@example.com", subject="Big", body=body))).task_id
    assert await redis.object("encoding", keys.task(task_id)) == "hashtable"
    await drain()
    assert json.loads(await store.result(task_id) or "{}")["status"] == "success"
    assert smtp.handler.messages[-1].message.get_content().strip() == body
