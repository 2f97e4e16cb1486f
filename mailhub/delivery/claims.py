"""How a worker claims queue entries: send slots, the shared pace, and where entries come from.

A claim takes the free send slots, asks the send pace (`store.pace`) for as
many permits, then reads that many entries. Over the pace nothing is read:
the slots are freed and the loop sleeps until a permit is due, so mail over
the pace waits unread on the stream, holding no slot, and no entry sits
with a worker where it could be taken over as stalled. Reads never block
while permits are held (a permit held through a blocking read would be
stale when the read returns); with nothing new, the loop waits for the next
entry holding neither.

Entries come from three places: new ones; ones this worker holds but lost
sight of (a read whose reply a Redis error lost, a begin that failed), taken
back at once rather than after the claim timeout; and ones a stalled or dead
worker held for the claim timeout. A read that finds the worker group gone
(Redis lost its data) creates it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from mailhub import metrics
from mailhub.delivery.sending_gate import SendingGate
from mailhub.errors import QueueGroupMissing
from mailhub.store.pace import Permits, SendPace
from mailhub.store.queue import QueueEntry, WorkQueue

logger = logging.getLogger(__name__)

#: Seconds after which a consumer holding nothing is removed from the group.
CONSUMER_RETENTION = 3600.0
#: Seconds the claim loop waits for a new entry before reading again.
READ_BLOCK = 1.0
#: Longest sleep of a claim loop over the pace before it asks again.
PACE_RECHECK = 1.0

#: Starts sending an entry whose permit was granted at the given time (Redis's clock, ms).
Start = Callable[[QueueEntry, int], None]
Read = Callable[[int], Awaitable[list[QueueEntry]]]


class Claims:
    """One worker's send slots and its three claim loops' steps (`claim_new`, `reclaim_stalled`).

    Each claimed entry goes to `start`; the worker calls `done` when it is
    finished with it, and `lost_sight` when it may hold an entry it did not see.
    """

    def __init__(
        self,
        queue: WorkQueue,
        pace: SendPace,
        gate: SendingGate,
        *,
        name: str,
        concurrency: int,
        claim_timeout: float,
        start: Start,
    ) -> None:
        self.queue = queue
        self.pace = pace
        self.gate = gate
        self.name = name
        self.concurrency = concurrency
        self.claim_timeout = claim_timeout
        self._start = start
        self._slots = asyncio.Semaphore(concurrency)
        #: Entries started and not done yet.
        self._held: set[str] = set()
        #: This worker may hold entries it does not know of.
        self._orphans = False
        #: After a read that found nothing new: the stream's newest id then (`read_new_or_mark`).
        self._idle_mark: str | None = None

    def done(self, entry: QueueEntry) -> None:
        """The worker is finished with `entry`: its slot is free again."""
        self._held.discard(entry.entry_id)
        self._slots.release()

    def lost_sight(self) -> None:
        """This worker may hold an entry it is not sending: take such entries back soon."""
        self._orphans = True

    async def claim_new(self) -> None:
        """One step of the claim loop: entries lost sight of, then new ones, or a wait for one."""
        try:
            if self._orphans:
                self._orphans = False
                await self._claim(self._read_orphans, self.concurrency)
            self._idle_mark = None
            await self._claim(self._read_new, self.concurrency)
        except RedisError:
            # A read whose reply was lost leaves entries held by this worker, unseen.
            self._orphans = True
            raise
        if self._idle_mark is not None:
            await self.queue.wait_for_new(self._idle_mark, timeout=READ_BLOCK)

    async def reclaim_stalled(self) -> None:
        """One step of the reclaim loop: take over stalled entries, else tidy the group and rest."""
        # Permits only for entries that are there: reserving a whole batch
        # would keep them from the claim loop while this one reads.
        try:
            stalled = await self.queue.count_stalled(idle=self.claim_timeout, limit=self.concurrency)
        except QueueGroupMissing:
            await self._recover_group()
            stalled = 0
        claimed = await self._claim(self._read_stalled, stalled) if stalled else 0
        if claimed:
            logger.warning("worker %s took over %d stalled tasks", self.name, claimed)
            return
        await self.queue.forget_idle_consumers(CONSUMER_RETENTION, keep=self.name)
        await asyncio.sleep(min(5.0, self.claim_timeout / 4))

    async def _claim(self, read: Read, batch: int) -> int:
        """Read and start up to `batch` entries, as many as free slots and the pace allow."""
        taken = await self._take_slots(batch)
        entries: list[QueueEntry] = []
        try:
            permits = await self.pace.reserve(taken)
            if permits.granted:
                entries = await self._read_or_recover(read, permits.granted)
        finally:
            for _ in range(taken - len(entries)):
                self._slots.release()
        for entry in entries:
            self._held.add(entry.entry_id)
            self._start(entry, permits.at)
        await self.pace.give_back(permits, len(entries))
        if not permits.granted:
            await _wait_for(permits)
        return len(entries)

    async def _read_or_recover(self, read: Read, count: int) -> list[QueueEntry]:
        try:
            return await read(count)
        except QueueGroupMissing:
            await self._recover_group()
            return []

    async def _recover_group(self) -> None:
        """Redis lost the queue's group: create it again; the worker that does it says so, once."""
        if not await self.queue.ensure_group():
            return  # another worker was first
        metrics.QUEUE_GROUP_RECREATED.inc()
        logger.warning(
            "worker %s: the queue's worker group was missing in Redis and has been created again: "
            "Redis restarted without its data, was flushed, or failed over to a replica without it. "
            "Mail queued before that may have been lost with it; mail queued since is delivered",
            self.name,
        )

    async def _take_slots(self, wanted: int) -> int:
        await self.gate.wait_open()
        await self._slots.acquire()
        taken = 1
        while taken < wanted and not self._slots.locked():
            await self._slots.acquire()
            taken += 1
        return taken

    async def _read_new(self, count: int) -> list[QueueEntry]:
        entries, self._idle_mark = await self.queue.read_new_or_mark(self.name, count)
        return entries

    async def _read_orphans(self, count: int) -> list[QueueEntry]:
        own = await self.queue.read_own(self.name, count + len(self._held))
        orphans = [entry for entry in own if entry.entry_id not in self._held]
        self._orphans = len(orphans) > count
        if orphans:
            logger.warning(
                "worker %s: taking back %d tasks a Redis error left unseen", self.name, len(orphans)
            )
        return orphans[:count]

    async def _read_stalled(self, count: int) -> list[QueueEntry]:
        return await self.queue.claim_stalled(self.name, count, idle=self.claim_timeout)


async def _wait_for(permits: Permits) -> None:
    """Sleep until a permit is due (at most `PACE_RECHECK`), counted in /metrics."""
    wait = min(PACE_RECHECK, permits.wait)
    metrics.PACE_WAIT_SECONDS.inc(wait)
    await asyncio.sleep(wait)
