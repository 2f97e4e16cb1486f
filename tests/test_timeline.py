"""The task timeline: its time format in Lua and Python, its three line formats, the queue age."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from mailhub.clock import iso
from mailhub.store import keys, timeline
from tests.helpers import MAIL, enqueue, result_of

_CONVERT = timeline.LUA + "local ms = epoch_ms(ARGV[1]) return {tostring(ms), iso(ms)}"

MOMENTS = [
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2000, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
    datetime(2024, 12, 31, 12, 0, 0, 1000, tzinfo=UTC),
    datetime(2100, 3, 1, tzinfo=UTC),
] + [datetime(2020, 1, 1, tzinfo=UTC) + timedelta(milliseconds=random.randrange(10**12)) for _ in range(20)]


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
async def test_lua_reads_and_writes_times_as_python_does(redis, moment):
    written = iso(moment)
    ms, back = await redis.eval(_CONVERT, 0, written)
    assert int(ms) == round(moment.timestamp() * 1000)
    assert back == written


def test_the_lines_of_every_layout_are_read_alike():
    at = "2026-12-04T08:53:03.088Z"
    ms = str(round(datetime(2026, 12, 4, 8, 53, 3, 88000, tzinfo=UTC).timestamp() * 1000))
    old = json.dumps({"seq": 1, "at": at, "attempts": 0, "event": "queued"})
    text = f'{old}\n2 attempt {at} 1\n3 retry {ms} 1 "451 4.7.1 try \\"later\\""\n'
    assert timeline.entries(text) == [
        {"seq": 1, "event": "queued", "at": at, "attempts": 0},
        {"seq": 2, "event": "attempt", "at": at, "attempts": 1},
        {"seq": 3, "event": "retry", "at": at, "attempts": 1, "detail": '451 4.7.1 try "later"'},
    ]


async def test_a_task_waiting_longer_than_the_queue_age_since_its_acceptance_fails(store, redis, drain, smtp):
    task_id = await enqueue(store, MAIL)
    key = keys.task(task_id)
    accepted = datetime.now(UTC) - timedelta(seconds=store.max_queue_age + 60)
    first, _, rest = (await redis.hget(key, "timeline")).partition(" queued ")
    _, _, attempts = rest.partition(" ")
    await redis.hset(key, "timeline", f"{first} queued {round(accepted.timestamp() * 1000)} {attempts}")
    await drain()
    assert (await result_of(store, task_id))["status"] == "failed"
    assert smtp.handler.messages == []
