"""The sending gate: closed while the owner's SMTP setup is broken.

A refused login or a failed TLS handshake is not any mail's fault. Instead
of burning every queued mail's attempts on it, the worker closes the gate,
says so loudly (log, `mailhub:smtp-status`, metrics, and with notifications
on, a `sending.paused` event), re-checks the login every `recheck_interval`
seconds, and opens the gate again once it works (`sending.resumed`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mailhub import metrics
from mailhub.clock import now_iso
from mailhub.errors import ConfigurationFailure, DeliveryError
from mailhub.store import smtp_status
from mailhub.store.outbox import Outbox, SendingStatus
from mailhub.store.tasks import Attempt

logger = logging.getLogger(__name__)


class Sender(Protocol):
    async def send(self, attempt: Attempt) -> None: ...

    async def verify(self) -> None:
        """Connect, do TLS and log in; raise a `DeliveryError` if that fails."""


class SendingGate:
    """Open while sending works; closed by a `ConfigurationFailure` until a login check passes."""

    def __init__(
        self,
        sender: Sender,
        redis: Redis,
        worker: str,
        recheck_interval: float,
        *,
        outbox: Outbox | None = None,
    ) -> None:
        self.sender = sender
        self.redis = redis
        self.worker = worker
        self.recheck_interval = recheck_interval
        #: Where a pause and a resume are announced (webhooks, alert mails), if anywhere.
        self.outbox = outbox
        self._open = asyncio.Event()
        self._open.set()
        self._reason = ""
        #: Whether this gate last announced paused (True), running (False) or nothing yet (None).
        self._announced: bool | None = None

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    async def pause(self, failure: ConfigurationFailure) -> None:
        """Close the gate (once) and report why."""
        if self.paused:
            return
        self._open.clear()
        metrics.SMTP_PAUSED.set(1)
        logger.error(
            "SENDING PAUSED: %s. No mail is failed meanwhile; the login is re-checked "
            "every %.3gs and sending resumes by itself once it works.",
            failure.reason,
            self.recheck_interval,
        )
        self._reason = failure.reason
        await self._record(paused=True, reason=failure.reason)
        await self._announce()

    async def watch(self) -> None:
        """Check the login at start; while paused, re-check it until it works again."""
        await self._check_login()
        while True:
            await asyncio.sleep(self.recheck_interval)
            if self.paused:
                await self._check_login()
            await self._announce()  # again, if Redis was unreachable when it changed

    async def _check_login(self) -> None:
        try:
            await _keeping_cancellation(self.sender.verify())
        except ConfigurationFailure as failure:
            await self.pause(failure)
            await self._record(paused=True, reason=failure.reason)
            return
        except (DeliveryError, RedisError, OSError) as exc:
            logger.warning("SMTP login check inconclusive: %s", exc)
            return
        await self._record(paused=False)
        if self.paused:
            logger.warning("SMTP login works again: sending resumed")
            self._open.set()
            metrics.SMTP_PAUSED.set(0)
        await self._announce()

    async def _record(self, *, paused: bool, reason: str = "") -> None:
        """Write the shared status; an unreachable Redis must not keep the gate from moving."""
        try:
            await smtp_status.record(self.redis, self.worker, paused=paused, reason=reason)
        except RedisError as exc:
            logger.warning("could not record the SMTP status (%s)", exc)

    async def _announce(self) -> None:
        """Queue sending.paused / sending.resumed once per change of this gate's state.

        The outbox compares with the state every worker shares, so only a
        real change is announced, however many workers find it.
        """
        if self.outbox is None or self._announced == self.paused:
            return
        status = SendingStatus(
            paused=self.paused, reason=self._reason if self.paused else "", at=now_iso(), worker=self.worker
        )
        try:
            await self.outbox.sending_changed(status)
        except RedisError as exc:
            change = "paused" if self.paused else "works"
            logger.warning("could not announce that sending %s (%s)", change, exc)
            return
        self._announced = self.paused


async def _keeping_cancellation(call: Awaitable[None]) -> None:
    """Await `call`; if this task was cancelled meanwhile, raise even if `call` swallowed it.

    aiosmtplib can turn a cancelled connect into an SMTP error.
    """
    try:
        await call
    finally:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
