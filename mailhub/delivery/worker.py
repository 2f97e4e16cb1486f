"""The worker: claim queued tasks, send them, retry later or finish them.

Any number of workers share the queue through one Redis consumer group.
A send slot is never held while waiting: a failed attempt schedules its
retry in the retries set and frees the slot at once, and mail over the
shared send pace waits on the stream, unread (`delivery.claims`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mailhub import metrics, reasons
from mailhub.background import forever
from mailhub.delivery.claims import Claims
from mailhub.delivery.sending_gate import Sender, SendingGate
from mailhub.errors import ConfigurationFailure, DeliveryError, PermanentFailure, Throttled
from mailhub.settings import Settings
from mailhub.store.pace import SendPace
from mailhub.store.queue import QueueEntry
from mailhub.store.tasks import Attempt, TaskStore

logger = logging.getLogger(__name__)

#: Seconds between looks at the retries set for retries that are due.
POLL_INTERVAL = 0.1


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
    """Delivers queued tasks with up to `concurrency` sends at once.

    `start()` and `stop()` (or `async with worker.running():`) serve until
    told to stop; `drain()` serves until nothing is left to deliver.
    """

    def __init__(
        self,
        store: TaskStore,
        sender: Sender,
        *,
        concurrency: int,
        claim_timeout: float,
        retry_base_delay: float,
        retry_max_delay: float,
        recheck_interval: float,
        shutdown_grace: float,
        poll_interval: float = POLL_INTERVAL,
        pace: SendPace | None = None,
    ) -> None:
        self.store = store
        self.queue = store.queue
        self.sender = sender
        self.concurrency = concurrency
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.shutdown_grace = shutdown_grace
        self.poll_interval = poll_interval
        #: Permits to start sends, shared with every other worker (no SMTP_RATE: throttling only).
        self.pace = pace or SendPace(store.redis, batcher=store.batcher)
        self.name = consumer_name()
        self.gate = SendingGate(sender, store.redis, self.name, recheck_interval, outbox=store.outbox)
        self.claims = Claims(
            self.queue,
            self.pace,
            self.gate,
            name=self.name,
            concurrency=concurrency,
            claim_timeout=claim_timeout,
            start=self._start,
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        #: Set by the retries loop once nothing is left, while `drain()` waits for it.
        self._drained: asyncio.Event | None = None

    @classmethod
    def from_settings(
        cls, store: TaskStore, sender: Sender, settings: Settings, *, poll_interval: float = POLL_INTERVAL
    ) -> Worker:
        """A worker configured as `settings` say."""
        return cls(
            store,
            sender,
            concurrency=settings.worker_concurrency,
            claim_timeout=settings.claim_timeout,
            retry_base_delay=settings.retry_base_delay,
            retry_max_delay=settings.retry_max_delay,
            recheck_interval=settings.smtp_recheck_interval,
            shutdown_grace=settings.shutdown_grace,
            poll_interval=poll_interval,
            pace=SendPace.from_settings(store.redis, settings, store.batcher),
        )

    @property
    def stopped(self) -> bool:
        """True once the claiming loops have ended (sends may still be in flight)."""
        return all(loop.done() for loop in self._loops)

    async def start(self) -> None:
        """Join the consumer group and start claiming in the background."""
        await self.queue.ensure_group()
        owner = f"worker {self.name}"
        self._loops = [
            asyncio.create_task(forever(self.claims.claim_new, owner), name="worker-claim"),
            asyncio.create_task(forever(self.claims.reclaim_stalled, owner), name="worker-reclaim"),
            asyncio.create_task(forever(self._promote_retries, owner), name="worker-retries"),
            asyncio.create_task(self.gate.watch(), name="worker-smtp-login"),
        ]
        logger.info("worker %s started, %d send slots", self.name, self.concurrency)

    async def stop(self) -> None:
        """Stop claiming, give in-flight sends `shutdown_grace` seconds, then cancel them.

        A cancelled send keeps its queue entry, so another worker takes it over.
        """
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._in_flight:
            logger.info("worker %s waiting for %d sends", self.name, len(self._in_flight))
            _, pending = await asyncio.wait(self._in_flight, timeout=self.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        logger.info("worker %s stopped", self.name)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Worker]:
        """`async with worker.running():` starts it and stops it on exit."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def drain(self, *, timeout: float) -> None:
        """Start, deliver until no task waits for an attempt (retries included), then stop.

        arq's burst mode, for tests and one-off runs: when this returns, every
        task queued before has reached success or failed. Raises TimeoutError
        if that takes longer than `timeout` seconds; the worker stops either way.
        """
        self._drained = asyncio.Event()
        try:
            async with self.running(), asyncio.timeout(timeout):
                await self._drained.wait()
        finally:
            self._drained = None

    def _start(self, entry: QueueEntry, permitted_at: int) -> None:
        task = asyncio.create_task(self._process(entry, permitted_at))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _promote_retries(self) -> None:
        await self.queue.promote_due_retries()
        if self._drained is not None and not self._in_flight and not await self.queue.backlog():
            self._drained.set()
        await asyncio.sleep(self.poll_interval)

    async def _process(self, entry: QueueEntry, permitted_at: int) -> None:
        try:
            attempt = await self.store.begin_attempt(entry)
            if attempt is not None:
                await self._attempt(attempt, permitted_at)
        except Exception:
            logger.exception("task %s: could not record its outcome; it will be retried", entry.task_id)
            self.claims.lost_sight()
        finally:
            self.claims.done(entry)

    async def _attempt(self, attempt: Attempt, permitted_at: int) -> None:
        logger.info("task %s: attempt %d to %s", attempt.task_id, attempt.number, attempt.to)
        try:
            with metrics.ATTEMPT_SECONDS.time():
                await self.sender.send(attempt)
        except DeliveryError as failure:
            metrics.FAILURES.labels(reasons.failure_class(failure)).inc()
            if isinstance(failure, ConfigurationFailure):
                await self._defer(attempt, failure)
                return
            if isinstance(failure, Throttled):
                await self._slow_down(attempt, failure, permitted_at)
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

    async def _slow_down(self, attempt: Attempt, failure: Throttled, permitted_at: int) -> None:
        """Slow every worker down, so queued mail waits instead of spending attempts on refusals.

        The throttled mail keeps its attempt counted: a reply that says
        "too fast" can also be a refusal of this very mail (a policy, a
        greylist), and counting keeps the promise of `max_attempts`.
        """
        metrics.THROTTLED.labels("reply").inc()
        try:
            slowdown = await self.pace.throttled(permitted_at)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning(
                "task %s: throttled, but Redis is unreachable to slow down (%s)", attempt.task_id, exc
            )
            return
        if slowdown is None:
            return
        metrics.THROTTLED.labels("slowdown").inc()
        logger.warning(
            "task %s: the SMTP server asks to slow down (%s): no sends for %.1f s, then at most %d/s "
            "until nothing is throttled for a while (slow-down level %d)",
            attempt.task_id,
            failure.reason,
            slowdown.pause,
            slowdown.per_second,
            slowdown.level,
        )

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
