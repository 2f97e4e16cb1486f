"""The work queue: the stream of tasks ready for an attempt, its worker group, the retries set.

Workers share the stream through one consumer group. An entry a worker
read stays pending on it until the task's outcome script acknowledges and
deletes it, so an entry held by a worker that died is found again by
`claim_stalled`. A failed attempt's task waits in the retries set, scored
by its due time, until `promote_due_retries` puts it back on the stream.

The group lives in Redis like the tasks: a Redis restarted without its data,
a FLUSHALL, or a failover to a replica that never had it, loses it, and the
reads then raise `QueueGroupMissing`. The worker that meets it creates the
group again (`ensure_group`); entries added since (new submits) are all read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from mailhub.errors import QueueGroupMissing
from mailhub.store import keys, members, scripts
from mailhub.store.batching import ScriptBatcher


@dataclass(frozen=True)
class QueueEntry:
    """One stream entry: the task it asks an attempt for."""

    entry_id: str
    task_id: str


def _entry(entry_id: str, fields: dict[str, str]) -> QueueEntry:
    """A stream entry as the worker takes it: the entry names its task by member (`members`)."""
    return QueueEntry(entry_id, members.task_id(fields["task_id"]))


@dataclass(frozen=True)
class Consumer:
    """A worker known to the group: its name, entries it holds, seconds since it last read."""

    name: str
    pending: int
    idle: float


@dataclass(frozen=True)
class QueueDepth:
    """What waits: entries on the stream, tasks in the retries set, the oldest entry's age."""

    queued: int
    retrying: int
    oldest_seconds: float


class WorkQueue:
    """Every Redis command on the queue stream and the retries set; takes a Redis client."""

    def __init__(self, redis: Redis, batcher: ScriptBatcher | None = None) -> None:
        """`batcher`: shares pipelines with other calls (the task store's); by default one of its own."""
        self.redis = redis
        self._batcher = batcher or ScriptBatcher(redis)
        self._promote = redis.register_script(scripts.source(scripts.PROMOTE_DUE))

    async def ensure_group(self) -> bool:
        """Create the worker group (and the stream) unless they exist; True if this call created it."""
        try:
            await self.redis.xgroup_create(keys.QUEUE, keys.WORKERS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def read_new(self, consumer: str, count: int, *, block: float | None) -> list[QueueEntry]:
        """Up to `count` entries no worker has read yet, for `consumer`.

        With none there, waits up to `block` seconds for one (None: answers at once).
        Raises `QueueGroupMissing` if Redis has lost the group.
        """
        with _group_needed():
            reply: Any
            if block is None:  # answers at once: it may share a pipeline
                reply = await self._batcher.command(
                    "XREADGROUP",
                    "GROUP",
                    keys.WORKERS_GROUP,
                    consumer,
                    "COUNT",
                    count,
                    "STREAMS",
                    keys.QUEUE,
                    ">",
                )
            else:
                reply = await self.redis.xreadgroup(
                    # BLOCK 0 would wait forever
                    keys.WORKERS_GROUP,
                    consumer,
                    {keys.QUEUE: ">"},
                    count=count,
                    block=max(1, int(block * 1000)),
                )
        return [_entry(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    async def read_own(self, consumer: str, count: int) -> list[QueueEntry]:
        """Up to `count` entries `consumer` holds already (read, not acknowledged), oldest first.

        Raises `QueueGroupMissing` if Redis has lost the group.
        """
        with _group_needed():
            reply: Any = await self.redis.xreadgroup(
                keys.WORKERS_GROUP, consumer, {keys.QUEUE: "0"}, count=count
            )
        # An entry deleted while it was held comes back without fields.
        return [_entry(entry_id, fields) for _, batch in reply or [] for entry_id, fields in batch if fields]

    async def read_new_or_mark(self, consumer: str, count: int) -> tuple[list[QueueEntry], str | None]:
        """Up to `count` new entries for `consumer`, at once; with none, a mark for `wait_for_new`.

        Never blocks, so whoever reads holds nothing (a send permit) while it
        waits. The mark is the newest id the stream ever had, read in the same
        transaction as the empty read: an entry added after it is newer.
        Raises `QueueGroupMissing` if Redis has lost the group.
        """
        entries = await self.read_new(consumer, count, block=None)
        if entries:
            return entries, None
        with _group_needed():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xreadgroup(keys.WORKERS_GROUP, consumer, {keys.QUEUE: ">"}, count=count)
                pipe.xinfo_stream(keys.QUEUE)
                reply, info = await pipe.execute()
        entries = [_entry(entry_id, fields) for _, batch in reply or [] for entry_id, fields in batch]
        return entries, None if entries else info["last-generated-id"]

    async def wait_for_new(self, mark: str, *, timeout: float) -> None:
        """Return once an entry newer than `mark` is on the stream, or after `timeout` seconds."""
        await self.redis.xread({keys.QUEUE: mark}, count=1, block=max(1, int(timeout * 1000)))

    async def count_stalled(self, *, idle: float, limit: int) -> int:
        """How many entries (at most `limit`) some worker has held for `idle` seconds or more.

        Raises `QueueGroupMissing` if Redis has lost the group.
        """
        with _group_needed():
            held = await self.redis.xpending_range(
                keys.QUEUE, keys.WORKERS_GROUP, min="-", max="+", count=limit, idle=int(idle * 1000)
            )
        return len(held)

    async def claim_stalled(self, consumer: str, count: int, *, idle: float) -> list[QueueEntry]:
        """Take over up to `count` entries another worker has held for `idle` seconds or more.

        Raises `QueueGroupMissing` if Redis has lost the group.
        """
        with _group_needed():
            reply: Any = await self.redis.xautoclaim(
                keys.QUEUE,
                keys.WORKERS_GROUP,
                consumer,
                min_idle_time=int(idle * 1000),
                start_id="0-0",
                count=count,
            )
        # An entry deleted while it was pending comes back without fields.
        return [_entry(entry_id, fields) for entry_id, fields in reply[1] if fields]

    async def promote_due_retries(self, batch: int = 500) -> int:
        """Queue the retries whose time has come; returns how many."""
        return int(
            await self._promote(keys=[keys.RETRIES, keys.QUEUE], args=[int(time.time() * 1000), batch])
        )

    async def depth(self) -> QueueDepth:
        """Entries on the stream and in the retries set, and the age of the oldest entry."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.QUEUE)
            pipe.zcard(keys.RETRIES)
            pipe.xrange(keys.QUEUE, count=1)
            queued, retrying, first = await pipe.execute()
        # A stream entry id starts with its creation time in milliseconds.
        oldest_ms = int(first[0][0].split("-")[0]) if first else None
        oldest = max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0.0
        return QueueDepth(int(queued), int(retrying), oldest)

    async def backlog(self) -> int:
        """Tasks waiting for an attempt or its outcome: stream entries plus retries.

        Zero means every task queued so far has reached success or failed.
        """
        depth = await self.depth()
        return depth.queued + depth.retrying

    async def consumers(self) -> list[Consumer]:
        """The workers the group knows (none before the group exists)."""
        try:
            found = await self.redis.xinfo_consumers(keys.QUEUE, keys.WORKERS_GROUP)
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return []
            raise
        return [Consumer(c["name"], int(c["pending"]), c["idle"] / 1000) for c in found]

    async def forget_idle_consumers(self, idle_seconds: float, keep: str) -> int:
        """Drop consumers of the group that hold nothing and were silent this long.

        Every worker process joins under a new name; without this the group
        would list every worker that ever ran. A live worker that was merely
        idle joins again with its next read.
        """
        stale = [
            c.name
            for c in await self.consumers()
            if c.name != keep and c.pending == 0 and c.idle >= idle_seconds
        ]
        for name in stale:
            await self.redis.xgroup_delconsumer(keys.QUEUE, keys.WORKERS_GROUP, name)
        return len(stale)


@contextlib.contextmanager
def _group_needed() -> Iterator[None]:
    """Turn Redis's answer to a command on a lost group (or stream) into `QueueGroupMissing`."""
    try:
        yield
    except ResponseError as exc:
        if str(exc).startswith("NOGROUP") or "no such key" in str(exc):
            raise QueueGroupMissing(str(exc)) from None
        raise
