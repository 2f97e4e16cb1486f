"""TaskStore.accept: rate limit, idempotency and queueing in one enqueue script."""

from __future__ import annotations

import json
import uuid

import pytest

from mailhub.errors import RateLimited
from mailhub.store import keys, tasks
from mailhub.store.rate_limit import Quota, rate_windows
from mailhub.store.tasks import IdempotencyKey
from tests.helpers import MAIL

CLIENT = "203.0.113.7"


@pytest.fixture
def quota_for():
    def quota(rate_limit: str):
        return Quota(CLIENT, rate_windows(rate_limit))

    return quota


async def test_each_window_is_counted_and_expires_with_the_window(store, redis, quota_for):
    quota = quota_for("5/minute;50/hour")
    await store.accept(MAIL, quota=quota)
    await store.accept(MAIL, quota=quota)
    now = (await redis.time())[0]
    for window in (60, 3600):
        (counter,) = await redis.keys(keys.rate_limit(window, CLIENT) + ":*")
        start = int(counter.rpartition(":")[2])
        assert start % window == 0 and start <= now < start + window
        assert await redis.get(counter) == "2"
        assert 0 < await redis.ttl(counter) <= start + window - now
    assert await redis.xlen(keys.QUEUE) == 2


async def test_over_the_limit_nothing_but_the_counter_is_written(store, redis, quota_for):
    quota = quota_for("1/day")
    await store.accept(MAIL, quota=quota)
    with pytest.raises(RateLimited) as refused:
        await store.accept(MAIL, IdempotencyKey("client:" + CLIENT, "form-1"), quota)
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 24 * 3600
    assert await redis.xlen(keys.QUEUE) == 1
    assert len(await redis.keys(keys.task("*"))) == 1
    assert not await redis.exists(keys.idempotency("client:" + CLIENT, "form-1"))


async def test_a_later_window_is_not_counted_once_an_earlier_one_refuses(store, redis, quota_for):
    quota = quota_for("1/hour;10/day")
    await store.accept(MAIL, quota=quota)
    for _ in range(3):
        with pytest.raises(RateLimited):
            await store.accept(MAIL, quota=quota)
    (hour,) = await redis.keys(keys.rate_limit(3600, CLIENT) + ":*")
    (day,) = await redis.keys(keys.rate_limit(86400, CLIENT) + ":*")
    assert (await redis.get(hour), await redis.get(day)) == ("4", "1")


async def test_limits_on_the_same_window_length_share_one_counter(store, redis, quota_for):
    quota = quota_for("10/day;1/86400 seconds")
    await store.accept(MAIL, quota=quota)
    with pytest.raises(RateLimited):
        await store.accept(MAIL, quota=quota)
    (counter,) = await redis.keys(keys.rate_limit(86400, CLIENT) + ":*")
    assert await redis.get(counter) == "2"


async def test_without_a_quota_nothing_is_counted(store, redis):
    await store.accept(MAIL)
    assert await redis.keys(keys.rate_limit(60, "*")) == []
    assert await redis.xlen(keys.QUEUE) == 1


async def test_a_repeated_enqueue_of_the_same_task_queues_it_once(store, redis, monkeypatch):
    # As when the reply to an enqueue is lost with its connection and the call is sent again.
    fixed = uuid.uuid4()
    monkeypatch.setattr(tasks.uuid, "uuid4", lambda: fixed)
    first = await store.accept(MAIL)
    again = await store.accept(MAIL)
    assert (first.task_id, first.created) == (str(fixed), True)
    assert (again.task_id, again.created) == (str(fixed), False)
    assert await redis.xlen(keys.QUEUE) == 1
    assert json.loads(await store.result(str(fixed)) or "{}")["seq"] == 1  # one `queued` event
