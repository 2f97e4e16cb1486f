"""Webhooks: sign each delivery the Standard Webhooks way, POST it, retry it with backoff.

A delivery is claimed from Redis (`store.webhooks`), POSTed with its own
HTTP connections and concurrency (mail delivery never waits for it), and
its outcome recorded: a 2xx answer is delivered; any other answer, a
timeout or a connection error is retried after a growing delay
(`retry_delay`), for `max_age` seconds, then dropped and counted. A 410
Gone drops it at once: the receiver asks for no more. Every attempt of one
event carries the same `webhook-id`, a fresh `webhook-timestamp` and a
signature of `id.timestamp.body` (the `standardwebhooks` package signs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from standardwebhooks import Webhook

from mailhub import __version__, metrics
from mailhub.store.webhooks import Delivery, WebhookQueue, shown_url

logger = logging.getLogger(__name__)

#: Waits between attempts, in units of the base delay (5 s by default): 5 s, 30 s,
#: 2 min, 10 min, 30 min, then every hour, until the delivery is `max_age` old.
SCHEDULE = (1, 6, 24, 120, 360, 720)
#: POSTs in flight at once per worker process.
CONCURRENCY = 8
#: Seconds a claim outlasts the POST's timeout: a worker that dies mid-POST
#: leaves its delivery to another this long after the timeout.
LEASE_MARGIN = 20.0
#: Seconds between looks for due deliveries when none was found.
POLL_INTERVAL = 0.5
#: The longest a receiver's Retry-After is followed (seconds).
MAX_RETRY_AFTER = 3600.0


def retry_delay(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt number `attempt`: `SCHEDULE` × `base`, ±20 % jitter."""
    step = SCHEDULE[min(attempt, len(SCHEDULE)) - 1]
    return base * step * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class Answer:
    """What one POST came to: a status, or an error without one."""

    status: int | None
    error: str = ""
    #: Seconds the receiver asked to wait (Retry-After), if it did.
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookPoster:
    """Signs and POSTs deliveries over its own HTTP connections."""

    def __init__(self, secret: str, *, timeout: float) -> None:
        self._signer = Webhook(secret)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": f"mailhub/{__version__}"},
            )
        return self._session

    def headers(self, delivery: Delivery, at: datetime) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt made at `at`."""
        return {
            "Content-Type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self._signer.sign(delivery.id, at, delivery.body),
        }

    async def post(self, delivery: Delivery) -> Answer:
        """POST `delivery` once; never raises for what the receiver or the network did."""
        headers = self.headers(delivery, datetime.now(UTC))
        try:
            async with self._client().post(
                delivery.url, data=delivery.body.encode(), headers=headers, allow_redirects=False
            ) as response:
                return Answer(response.status, f"HTTP {response.status}", _retry_after(response))
        except TimeoutError:
            return Answer(None, f"no answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            return Answer(None, f"{type(exc).__name__}: {exc}"[:300])
        except Exception as exc:  # a bug must not leave the delivery leased and retried unseen forever
            logger.exception("webhook %s: POST failed unexpectedly", delivery.id)
            return Answer(None, f"internal error: {type(exc).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None


class WebhookDeliverer:
    """Claims due deliveries and POSTs them, up to `CONCURRENCY` at once, until stopped."""

    def __init__(
        self,
        queue: WebhookQueue,
        poster: WebhookPoster,
        *,
        urls: tuple[str, ...],
        retry_base_delay: float,
        max_age: float,
    ) -> None:
        self.queue = queue
        self.poster = poster
        self.urls = urls
        self.retry_base_delay = retry_base_delay
        self.max_age = max_age
        self._in_flight: dict[asyncio.Task[None], Delivery] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due deliveries now (new ones were just fanned out)."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and POST due deliveries until cancelled; Redis errors propagate to the caller."""
        while True:
            free = CONCURRENCY - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            self._wake.clear()
            claimed = await self.queue.claim_due(free, lease=self.poster.timeout + LEASE_MARGIN)
            for delivery in claimed:
                task = asyncio.create_task(self._deliver(delivery), name=f"webhook-{delivery.delivery}")
                self._in_flight[task] = delivery
                task.add_done_callback(self._forget)
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)

    async def stop(self, grace: float) -> None:
        """Give POSTs in flight `grace` seconds, then cut them off and make them due again."""
        if not self._in_flight:
            return
        pending = dict(self._in_flight)
        _, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for task in late:
            with contextlib.suppress(Exception):
                await self.queue.release(pending[task])

    async def _deliver(self, delivery: Delivery) -> None:
        if delivery.url not in self.urls:
            answer, outcome = Answer(None, "the URL is no longer in WEBHOOK_URL"), "give_up"
        else:
            answer = await self.poster.post(delivery)
            outcome = "delivered" if answer.ok else "give_up" if answer.status == 410 else "failed"
        delay = retry_delay(delivery.attempt, self.retry_base_delay)
        if answer.retry_after is not None:
            delay = max(delay, answer.retry_after)
        became = await _until_recorded(
            lambda: self.queue.record(
                delivery,
                outcome,
                retry_in=delay,
                max_age=self.max_age,
                status=answer.status,
                error="" if answer.ok else answer.error,
            )
        )
        _count_and_log(delivery, answer, became, delay)


def _count_and_log(delivery: Delivery, answer: Answer, became: str, delay: float) -> None:
    where = f"webhook {delivery.id} to {shown_url(delivery.url)}: attempt {delivery.attempt}"
    if became == "delivered":
        metrics.WEBHOOKS.labels("delivered").inc()
        logger.info("%s delivered (HTTP %s)", where, answer.status)
        return
    if answer.ok:
        return  # delivered, and already finished by another worker
    metrics.WEBHOOKS.labels("failed").inc()
    if became == "dropped":
        metrics.WEBHOOKS.labels("dropped").inc()
        logger.error("%s failed (%s): DROPPED, no more attempts", where, answer.error)
    elif became == "retry":
        logger.warning("%s failed (%s); retry in %.1fs", where, answer.error, delay)
    else:
        logger.warning("%s failed (%s); another worker has it now", where, answer.error)


async def _until_recorded(write: Callable[[], Awaitable[str]], cap: float = 2.0) -> str:
    """Await a write of an outcome, retrying while Redis is unreachable.

    Giving up would leave the delivery to be POSTed again when its lease ends.
    """
    delay = 0.05
    while True:
        try:
            return await write()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning("Redis unreachable while recording a webhook's outcome (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(cap, delay * 2)
