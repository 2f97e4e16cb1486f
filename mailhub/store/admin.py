"""The owner's operations on tasks: re-send failed mail, delete a task, erase an address.

Each is a Lua script (`admin_scripts`), so a task is never half re-queued or
half deleted. Bulk operations go in bounded batches, each one atomic, so
Redis never blocks long on one call.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from mailhub.clock import now_iso
from mailhub.store import admin_scripts, keys, outbox
from mailhub.store.addresses import address_digest, normalized

logger = logging.getLogger(__name__)

#: Tasks one erasure script deletes at most; more take further calls.
ERASE_BATCH = 200


class Resend(enum.Enum):
    """What re-sending one task did."""

    REQUEUED = 1  #: back on the queue with a fresh attempt budget
    NOT_FAILED = 0  #: only a failed task can be re-sent
    UNKNOWN = -1  #: no such task (never existed, expired or deleted)


@dataclass(frozen=True)
class BulkResend:
    """How many failed tasks went back on the queue, and how many are still failed."""

    requeued: int
    remaining: int


class TaskAdmin:
    """Re-send, delete and erase tasks; takes a Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._requeue = redis.register_script(admin_scripts.source(admin_scripts.REQUEUE))
        self._requeue_failed = redis.register_script(admin_scripts.source(admin_scripts.REQUEUE_FAILED))
        self._delete = redis.register_script(admin_scripts.source(admin_scripts.DELETE))
        self._erase = redis.register_script(admin_scripts.source(admin_scripts.ERASE))

    async def resend(self, task_id: str) -> Resend:
        """Put a failed task back on the queue: same Message-ID, fresh attempts (event `requeued`)."""
        outcome = Resend(int(await self._requeue(keys=[keys.task(task_id)], args=[now_iso()])))
        if outcome is Resend.REQUEUED:
            logger.info("task %s: re-sent by the owner", task_id)
        return outcome

    async def resend_failed(self, since: float, limit: int) -> BulkResend:
        """Re-send up to `limit` tasks that failed at or after `since` (epoch s), oldest first."""
        requeued, remaining = await self._requeue_failed(args=[int(since * 1000), limit, now_iso()])
        logger.info("re-sent %d failed tasks (failed since %s); %d still failed", requeued, since, remaining)
        return BulkResend(int(requeued), int(remaining))

    async def delete(self, task_id: str) -> bool:
        """Remove the task and every trace of it (waiting webhooks and digest lines too);
        False if there was no such task."""
        deleted = bool(await self._delete(args=[task_id, now_iso()]))
        if deleted:
            await outbox.forget_tasks(self.redis, [task_id])
            logger.info("task %s: deleted by the owner", task_id)
        return deleted

    async def erase_address(self, address: str, *, max_batches: int = 10_000) -> int:
        """Delete every task to (or with Reply-To) `address`, the dev inbox's mails and
        the waiting notifications mentioning it; returns how many tasks. Runs in
        batches of `ERASE_BATCH`."""
        digest, erased = address_digest(address), []
        for _ in range(max_batches):
            more, *deleted = await self._erase(args=[digest, normalized(address), ERASE_BATCH, now_iso()])
            erased += [_text(task_id) for task_id in deleted]
            if not int(more):
                break
        await outbox.forget_tasks(self.redis, erased)
        await outbox.forget_address(self.redis, address)
        logger.info("erased %d tasks about address digest %s", len(erased), digest)
        return len(erased)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
