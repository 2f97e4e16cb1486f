"""Claiming entries: a worker takes back what a Redis error left with it, without waiting to be stalled."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from mailhub.store.pace import Permits, SendPace
from tests.helpers import enqueue, result_of, wait_for_status, worker_for


class FailingOnce(SendPace):
    """The real pace, whose first permit request fails as a dropped Redis connection would."""

    failed = False

    async def reserve(self, wanted: int) -> Permits:
        if not self.failed:
            self.failed = True
            raise RedisConnectionError("Connection closed by server (injected)")
        return await super().reserve(wanted)


async def test_an_entry_a_lost_reply_left_with_the_worker_is_sent_at_once(store, settings, smtp):
    await store.queue.ensure_group()
    task_id = await enqueue(store)
    async with worker_for(store, settings, claim_timeout=60) as worker:
        # The worker's read reached Redis, but its reply was lost: the entry is the worker's, unseen.
        assert await store.queue.read_new(worker.name, 1, block=None)
        worker.claims.pace = FailingOnce(store.redis)
        async with worker.running():
            await wait_for_status(store, task_id, timeout=5)
    assert (await result_of(store, task_id))["status"] == "success"
    assert len(await smtp.handler.wait_for_count(1)) == 1
