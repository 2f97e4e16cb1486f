"""The worker: claim queued tasks, send them, retry later or finish them.

Any number of workers share the queue through one Redis consumer group.
A send slot is never held while waiting: a failed attempt schedules its
retry in the retries set and frees the slot at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mailhub import metrics, reasons
from mailhub.delivery.sending_gate import Sender, SendingGate
from mailhub.errors import ConfigurationFailure, DeliveryError, PermanentFailure
from mailhub.store import keys
from mailhub.store.tasks import Attempt, QueueEntry, TaskStore

logger = logging.getLogger(__name__)

#: Seconds after which a consumer holding nothing is removed from the group.
CONSUMER_RETENTION = 3600.0


async def _until_recorded(write: Callable[[], Awaitable[None]], cap: float = 2.0) -> None:
    """Await a write of an outcome, retrying while Redis is unreachable.

    The mail has been through SMTP by now: giving up here would let another
    worker send it again once the entry is reclaimed.
    """
    delay = 0.05
    while True:
        try:
            await write()
            return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning("Redis unreachable while recording an outcome (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(cap, delay * 2)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Delivers queued tasks with up to `concurrency` sends at once."""

    def __init__(
        self,
        store: TaskStore,
        sender: Sender,
        *,
        concurrency: int = 32,
        claim_timeout: float = 60.0,
        retry_base_delay: float = 2.0,
        retry_max_delay: float = 600.0,
        poll_interval: float = 0.1,
        recheck_interval: float = 30.0,
    ) -> None:
        self.store = store
        self.sender = sender
        self.concurrency = concurrency
        self.claim_timeout = claim_timeout
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.poll_interval = poll_interval
        self.name = consumer_name()
        self.gate = SendingGate(sender, store.redis, self.name, recheck_interval)
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Join the consumer group and start claiming in the background."""
        await self.store.ensure_group()
        self._loops = [
            asyncio.create_task(self._forever(self._claim_new), name="worker-claim"),
            asyncio.create_task(self._forever(self._reclaim_stalled), name="worker-reclaim"),
            asyncio.create_task(self._forever(self._promote_retries), name="worker-retries"),
            asyncio.create_task(self.gate.watch(), name="worker-smtp-login"),
        ]
        logger.info("worker %s started, %d send slots", self.name, self.concurrency)

    async def stop(self, grace: float = 25.0) -> None:
        """Stop claiming, give in-flight sends `grace` seconds, then cancel them.

        A cancelled send keeps its queue entry, so another worker takes it over.
        """
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._in_flight:
            logger.info("worker %s waiting for %d sends", self.name, len(self._in_flight))
            _, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        logger.info("worker %s stopped", self.name)

    async def _forever(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` again and again; a Redis outage backs off instead of ending it."""
        failures = 0
        while True:
            try:
                await step()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                logger.exception("worker %s: %s failed, retrying in %.1fs", self.name, step.__name__, delay)
                await asyncio.sleep(delay)

    async def _take_slots(self, wanted: int) -> int:
        await self.gate.wait_open()
        await self._slots.acquire()
        taken = 1
        while taken < wanted and not self._slots.locked():
            await self._slots.acquire()
            taken += 1
        return taken

    async def _claim(self, read: Callable[[int], Awaitable[list[QueueEntry]]], batch: int) -> int:
        taken = await self._take_slots(batch)
        try:
            entries = await read(taken)
        except BaseException:
            for _ in range(taken):
                self._slots.release()
            raise
        for _ in range(taken - len(entries)):
            self._slots.release()
        for entry in entries:
            task = asyncio.create_task(self._process(entry))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(entries)

    async def _claim_new(self) -> None:
        await self._claim(self._read_new, self.concurrency)

    async def _read_new(self, count: int) -> list[QueueEntry]:
        reply: Any = await self.store.redis.xreadgroup(
            keys.WORKERS_GROUP, self.name, {keys.QUEUE: ">"}, count=count, block=1000
        )
        return [
            QueueEntry(entry_id, fields["task_id"])
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    async def _reclaim_stalled(self) -> None:
        claimed = await self._claim(self._read_stalled, self.concurrency)
        if claimed:
            logger.warning("worker %s took over %d stalled tasks", self.name, claimed)
            return
        await self.store.forget_idle_consumers(CONSUMER_RETENTION, keep=self.name)
        await asyncio.sleep(min(5.0, self.claim_timeout / 4))

    async def _read_stalled(self, count: int) -> list[QueueEntry]:
        reply: Any = await self.store.redis.xautoclaim(
            keys.QUEUE,
            keys.WORKERS_GROUP,
            self.name,
            min_idle_time=int(self.claim_timeout * 1000),
            start_id="0-0",
            count=count,
        )
        return [QueueEntry(entry_id, fields["task_id"]) for entry_id, fields in reply[1] if fields]

    async def _promote_retries(self) -> None:
        await self.store.promote_due_retries()
        await asyncio.sleep(self.poll_interval)

    async def _process(self, entry: QueueEntry) -> None:
        try:
            attempt = await self.store.begin_attempt(entry)
            if attempt is not None:
                await self._attempt(attempt)
        except Exception:
            logger.exception("task %s: could not record its outcome; it will be retried", entry.task_id)
        finally:
            self._slots.release()

    async def _attempt(self, attempt: Attempt) -> None:
        logger.info("task %s: attempt %d to %s", attempt.task_id, attempt.number, attempt.to)
        try:
            with metrics.ATTEMPT_SECONDS.time():
                await self.sender.send(attempt)
        except DeliveryError as failure:
            metrics.FAILURES.labels(reasons.failure_class(failure)).inc()
            if isinstance(failure, ConfigurationFailure):
                await self._defer(attempt, failure)
            else:
                await self._handle_failure(attempt, failure)
        else:
            # First thing after the server's 250: a crash now would mean a resend.
            await _until_recorded(lambda: self.store.succeed(attempt))
            metrics.MAILS.labels("sent").inc()
            logger.info("task %s: delivered on attempt %d", attempt.task_id, attempt.number)

    async def _defer(self, attempt: Attempt, failure: ConfigurationFailure) -> None:
        """Not this mail's fault: give the attempt back and stop sending until fixed."""
        detail = f"sending paused: {failure.reason}"
        public = reasons.retrying(failure)
        await _until_recorded(
            lambda: self.store.retry_later(attempt, self.gate.recheck_interval, public, detail, counted=False)
        )
        metrics.MAILS.labels("deferred").inc()
        logger.info("task %s: attempt %d given back, %s", attempt.task_id, attempt.number, detail)
        await self.gate.pause(failure)

    async def _handle_failure(self, attempt: Attempt, failure: DeliveryError) -> None:
        n = attempt.number
        if isinstance(failure, PermanentFailure) or n >= self.store.max_attempts:
            detail = f"failed after {n} attempt{'s' if n > 1 else ''}: {failure.reason}"
            await _until_recorded(lambda: self.store.fail(attempt, reasons.failed(failure), detail))
            metrics.MAILS.labels("failed").inc()
            logger.warning("task %s: %s", attempt.task_id, detail)
            return
        delay = backoff_delay(n, self.retry_base_delay, self.retry_max_delay)
        public = reasons.retrying(failure)
        await _until_recorded(lambda: self.store.retry_later(attempt, delay, public, failure.reason))
        metrics.MAILS.labels("retried").inc()
        logger.info(
            "task %s: attempt %d failed (%s); retry in %.1fs", attempt.task_id, n, failure.reason, delay
        )

    @contextlib.asynccontextmanager
    async def running(self, grace: float = 25.0):  # type: ignore[no-untyped-def]
        """`async with worker.running():` starts it and stops it on exit."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop(grace)
