"""Deliver built mail over pooled SMTP connections."""

from __future__ import annotations

import ssl

import aiosmtplib

from mailhub.delivery.failures import classify
from mailhub.delivery.message import OutgoingMail, parts_of, prepare
from mailhub.delivery.smtp_pool import IDLE_TIMEOUT, MAX_MESSAGES, SmtpPool, close_now
from mailhub.errors import DeliveryError
from mailhub.settings import Settings
from mailhub.store.tasks import Attempt


class SmtpSender:
    """Delivers messages over a pool of verified TLS connections (see `SmtpPool`)."""

    def __init__(
        self, settings: Settings, *, max_messages: int = MAX_MESSAGES, idle_timeout: float = IDLE_TIMEOUT
    ) -> None:
        self.settings = settings
        # The system trust store; SSL_CERT_FILE / SSL_CERT_DIR can add a private CA.
        self.tls_context = ssl.create_default_context()
        self.pool = SmtpPool(
            self._connect,
            size=settings.smtp_pool_size,
            max_messages=max_messages,
            idle_timeout=idle_timeout,
            send_timeout=settings.smtp_timeout,
        )

    async def send(self, attempt: Attempt) -> None:
        """Deliver the attempt's mail; raise a `DeliveryError` if it did not go.

        A mail that cannot be built safely raises `UnsendableMessage` before
        any connection is used.
        """
        mail = prepare(parts_of(attempt, self.settings.mail_from))
        try:
            await self.pool.send(lambda smtp: transmit(smtp, mail))
        except DeliveryError:
            raise
        except Exception as exc:
            raise classify(exc) from exc

    async def verify(self) -> None:
        """Connect, do TLS and log in on a fresh connection; raise a `DeliveryError` if not."""
        try:
            smtp = await self._connect()
            transport = smtp.transport
            try:
                await smtp.quit()
            finally:
                close_now(smtp, transport)
        except Exception as exc:
            raise classify(exc) from exc

    async def close(self) -> None:
        """Close the pooled connections politely (QUIT)."""
        await self.pool.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = open_smtp(self.settings, self.tls_context)
        await smtp.connect()
        return smtp


async def transmit(smtp: aiosmtplib.SMTP, mail: OutgoingMail) -> None:
    """One mail transaction: what aiosmtplib's `send_message` does, with mailhub's checked bytes."""
    if smtp.is_ehlo_or_helo_needed:
        await smtp.ehlo()  # the extensions decide the bytes
    options = []
    if mail.utf8:
        if not smtp.supports_extension("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                "an address is not ASCII and the server does not offer SMTPUTF8"
            )
        options.append("SMTPUTF8")
    if smtp.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
        data = mail.data
    else:
        data = mail.seven_bit_data()
    await smtp.sendmail(mail.sender, list(mail.recipients), data, mail_options=options)


def open_smtp(settings: Settings, tls_context: ssl.SSLContext) -> aiosmtplib.SMTP:
    """An unconnected client for the configured server; `connect()` does TLS and login."""
    return aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        use_tls=settings.smtp_tls == "ssl",
        start_tls=settings.smtp_tls == "starttls",
        tls_context=tls_context,
        username=settings.smtp_user or None,
        password=settings.smtp_pass or None,
        timeout=settings.smtp_timeout,
    )
