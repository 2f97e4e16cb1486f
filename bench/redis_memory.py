"""Where a mail's Redis bytes go: `MEMORY USAGE` per kind of key, per mail.

The bench reads what the store keeps, key by key (a measurement of storage):
the task hashes (a sample of them, exactly), the status indexes, the address
indexes and the queue stream. What `used_memory` counts beyond them per mail
(the keyspace's own tables, the expiry table, allocator rounding, client
buffers) is the rest.
"""

from __future__ import annotations

import random

from redis.asyncio import Redis

from mailhub.store import keys
from mailhub.store.index import STATUSES

#: Task hashes measured at most (each exactly); their mean stands for all.
SAMPLE = 2000


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def bytes_per_mail(redis: Redis, task_ids: list[str]) -> dict[str, float]:
    """Bytes per mail of each kind of key: task hash, status index, address index, queue stream."""
    sample = random.sample(task_ids, min(SAMPLE, len(task_ids)))
    async with redis.pipeline(transaction=False) as pipe:
        for task_id in sample:
            pipe.memory_usage(keys.task(task_id), samples=0)
        hashes = await pipe.execute()
    statuses = [await _usage(redis, keys.status_index(status)) for status in STATUSES]
    addresses = [await _usage(redis, key) async for key in redis.scan_iter(keys.address_index("*"), 1000)]
    count = len(task_ids)
    return {
        "task hash": sum(int(size or 0) for size in hashes) / len(sample),
        "status index": sum(statuses) / count,
        "address index": sum(addresses) / count,
        "queue stream": await _usage(redis, keys.QUEUE) / count,
    }


async def _usage(redis: Redis, key: str) -> int:
    return int(await redis.memory_usage(key, samples=0) or 0)
