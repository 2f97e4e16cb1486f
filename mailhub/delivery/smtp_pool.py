"""A pool of open, authenticated SMTP connections, reused across mails.

A connection serves at most `max_messages` transactions, is closed after
`idle_timeout` seconds unused, and goes back to the pool only in a known
state: after a successful transaction, or after a clean refusal (a 4xx/5xx
reply to MAIL, RCPT or DATA) followed by a successful RSET. Any other error
(a drop, a timeout, a 421, a cancellation) closes it, so a broken connection
never carries over to the next mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib

logger = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[aiosmtplib.SMTP]]
#: One mail transaction (MAIL, RCPT, DATA) on a connection the pool lends.
Transaction = Callable[[aiosmtplib.SMTP], Awaitable[None]]

#: "Service not available, closing transmission channel": the server is done with us.
_CLOSING = 421
#: Transactions one connection carries before it is replaced.
MAX_MESSAGES = 100
#: Seconds an unused connection stays open.
IDLE_TIMEOUT = 30.0
#: Seconds unused after which a connection is checked with RSET before it carries a mail.
PROBE_AFTER = 1.0


@dataclass(eq=False)
class _Connection:
    smtp: aiosmtplib.SMTP
    transactions: int = 0
    idle_since: float = 0.0
    reaper: asyncio.TimerHandle | None = None


class SmtpPool:
    """Up to `size` SMTP connections opened by `connect()`, shared by concurrent sends.

    `send_timeout` bounds one whole `send`: waiting for a free connection,
    connecting if needed, and the transaction (not the RSET after a refusal,
    so a refusal is always reported as the server's reply). A connection idle
    for `probe_after` seconds or more is checked with RSET before it is reused.
    """

    def __init__(
        self,
        connect: Connect,
        *,
        size: int,
        send_timeout: float,
        max_messages: int = MAX_MESSAGES,
        idle_timeout: float = IDLE_TIMEOUT,
        probe_after: float = PROBE_AFTER,
    ) -> None:
        if size < 1 or max_messages < 1:
            raise ValueError("size and max_messages must be at least 1")
        self.size = size
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self.probe_after = probe_after
        self.send_timeout = send_timeout
        self._connect = connect
        self._slots = asyncio.Semaphore(size)
        # LIFO: the most recently used connection is the likeliest to be alive.
        self._idle: list[_Connection] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Connections opened over the pool's life.
        self.opened = 0
        #: Connections currently carrying a transaction.
        self.busy = 0

    @property
    def idle(self) -> int:
        """Open connections waiting for a mail."""
        return len(self._idle)

    async def send(self, transaction: Transaction) -> None:
        """Run `transaction` on a pooled connection; raise aiosmtplib's exception if it fails."""
        if self._closed:
            raise aiosmtplib.SMTPException("the SMTP pool is closed")
        deadline = asyncio.get_running_loop().time() + self.send_timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise aiosmtplib.SMTPTimeoutError(
                f"all {self.size} SMTP connections stayed busy for {self.send_timeout:g}s"
            ) from None
        self.busy += 1
        try:
            await self._send_until(deadline, transaction)
        finally:
            self.busy -= 1
            self._slots.release()

    async def _send_until(self, deadline: float, transaction: Transaction) -> None:
        connection: _Connection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._checkout()
                connection.transactions += 1
                await transaction(connection.smtp)
        except (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPResponseException) as exc:
            # Outside the deadline: a refusal must be reported as the server's reply.
            if connection is not None:
                await self._after_refusal(connection, exc)
            raise
        except BaseException as exc:
            if connection is not None:
                self._discard(connection)
            if isinstance(exc, TimeoutError) and not isinstance(exc, aiosmtplib.SMTPTimeoutError):
                raise aiosmtplib.SMTPTimeoutError(
                    f"the SMTP server did not finish within {self.send_timeout:g}s"
                ) from exc
            raise
        self._checkin(connection)

    async def close(self) -> None:
        """QUIT every idle connection and wait for them; later sends are refused."""
        self._closed = True
        while self._idle:
            self._retire(self._idle.pop())
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _after_refusal(self, connection: _Connection, exc: aiosmtplib.SMTPException) -> None:
        """Keep the connection only if the server closed nothing and RSET succeeds."""
        if getattr(exc, "code", None) == _CLOSING or not await self._reset(connection):
            self._discard(connection)
        else:
            self._checkin(connection)

    async def _checkout(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reaper is not None:
                connection.reaper.cancel()
            unused_for = time.monotonic() - connection.idle_since
            # A server may drop an idle connection or queue a 421 on it: ask first.
            if connection.smtp.is_connected and (
                unused_for < self.probe_after or await self._reset(connection)
            ):
                return connection
            self._discard(connection)
        smtp = await self._connect()
        self.opened += 1
        logger.debug("opened SMTP connection %d", self.opened)
        return _Connection(smtp)

    async def _reset(self, connection: _Connection) -> bool:
        try:
            await connection.smtp.rset(timeout=min(5.0, self.send_timeout))
        except asyncio.CancelledError:
            self._discard(connection)
            raise
        except (aiosmtplib.SMTPException, OSError):
            return False
        return True

    def _checkin(self, connection: _Connection) -> None:
        if not connection.smtp.is_connected:
            self._discard(connection)
            return
        if self._closed or connection.transactions >= self.max_messages:
            self._retire(connection)
            return
        connection.idle_since = time.monotonic()
        connection.reaper = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire, connection)
        self._idle.append(connection)

    def _expire(self, connection: _Connection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)
            self._retire(connection)

    def _retire(self, connection: _Connection) -> None:
        """Say QUIT in the background: a polite close, never waited for by a send."""
        if connection.reaper is not None:
            connection.reaper.cancel()
        task = asyncio.create_task(self._quit(connection.smtp))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        transport = smtp.transport
        try:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(min(5.0, self.send_timeout)):
                    await smtp.quit()
        finally:
            close_now(smtp, transport)

    @staticmethod
    def _discard(connection: _Connection) -> None:
        """Drop a connection in an unknown state, without another word to the server."""
        if connection.reaper is not None:
            connection.reaper.cancel()
        close_now(connection.smtp)


def close_now(smtp: aiosmtplib.SMTP, transport: asyncio.BaseTransport | None = None) -> None:
    """Close `smtp`'s socket at once.

    aiosmtplib's close() starts a TLS shutdown that can wait 30 s for the
    server's close_notify and leaves the socket open meanwhile; after QUIT, or
    on a connection being thrown away, there is nothing left to say.
    """
    transport = transport or smtp.transport
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    smtp.close()
