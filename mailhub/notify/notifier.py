"""The notifier: a worker process's background tasks for webhooks and alert mails.

It fans the outbox out (one delivery per URL, failed mail to the digest,
sending changes to the alert mails), delivers webhooks, and queues alert
mails. Every step's state is in Redis, so any number of worker processes
run one each, and a restart picks up where the last one stopped. It has
its own Redis client and HTTP connections: mail delivery never waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio import Redis

from mailhub.background import forever
from mailhub.notify.alerts import AlertMailer
from mailhub.notify.webhooks import WebhookDeliverer, WebhookPoster
from mailhub.settings import Settings
from mailhub.store import redis_client
from mailhub.store.alerts import AlertStore
from mailhub.store.outbox import FAN_OUT_BATCH, Outbox
from mailhub.store.tasks import TaskStore
from mailhub.store.webhooks import WebhookQueue

logger = logging.getLogger(__name__)

#: Seconds between looks at the outbox when it was empty.
OUTBOX_POLL = 0.2
#: Seconds between looks for alert mails to queue (sending changes, a due digest).
ALERT_POLL = 1.0


def enabled(settings: Settings) -> bool:
    """True when anything is to be notified: webhook URLs or an alert address."""
    return bool(settings.webhook_urls or settings.alert_email)


class Notifier:
    """Runs the fan-out, webhook and alert loops until stopped; takes a Redis client."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.settings = settings
        self.outbox = Outbox(redis)
        self.deliverer: WebhookDeliverer | None = None
        self.mailer: AlertMailer | None = None
        self._poster: WebhookPoster | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._alert_wake = asyncio.Event()
        if settings.webhook_urls:
            self._poster = WebhookPoster(settings.webhook_secret, timeout=settings.webhook_timeout)
            self.deliverer = WebhookDeliverer(
                WebhookQueue(redis),
                self._poster,
                urls=settings.webhook_urls,
                retry_base_delay=settings.webhook_retry_base_delay,
                max_age=settings.webhook_max_age,
            )
        if settings.alert_email:
            self.mailer = AlertMailer(
                TaskStore.from_settings(redis, settings),
                AlertStore(redis),
                to=settings.alert_email,
                interval=settings.alert_interval,
                recheck_interval=settings.smtp_recheck_interval,
            )

    async def start(self) -> None:
        steps: list[Callable[[], Awaitable[None]]] = [self._fan_out]
        if self.deliverer is not None:
            steps.append(self.deliverer.run)
        if self.mailer is not None:
            steps.append(self._queue_alerts)
        self._loops = [
            asyncio.create_task(forever(step, "notifications"), name=f"notify-{step.__name__}")
            for step in steps
        ]
        logger.info(
            "notifications on: %d webhook URL(s)%s",
            len(self.settings.webhook_urls),
            f", alerts to {self.settings.alert_email}" if self.mailer else "",
        )

    async def stop(self, grace: float) -> None:
        """Stop the loops; POSTs in flight get `grace` seconds (capped by the webhook timeout)."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self.deliverer is not None:
            await self.deliverer.stop(min(grace, self.settings.webhook_timeout))
        if self._poster is not None:
            await self._poster.close()

    async def _fan_out(self) -> None:
        moved = await self.outbox.fan_out(self.settings.webhook_urls, alerts=self.mailer is not None)
        if moved:
            if self.deliverer is not None:
                self.deliverer.wake()
            self._alert_wake.set()
        if moved < FAN_OUT_BATCH:
            await asyncio.sleep(OUTBOX_POLL)

    async def _queue_alerts(self) -> None:
        assert self.mailer is not None
        self._alert_wake.clear()
        await self.mailer.queue_notices()
        await self.mailer.queue_digest()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._alert_wake.wait(), ALERT_POLL)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Notifier | None]:
    """The process's notifier with its own Redis client, started; None if nothing is configured."""
    if not enabled(settings):
        yield None
        return
    redis = redis_client.from_settings(settings)
    notifier = Notifier(redis, settings)
    try:
        await notifier.start()
        try:
            yield notifier
        finally:
            await notifier.stop(settings.shutdown_grace)
    finally:
        await redis.aclose()
