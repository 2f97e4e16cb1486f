"""Build the message and deliver it over pooled SMTP connections; classify what went wrong."""

from __future__ import annotations

import functools
import re
import ssl
from email import policy
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate, parseaddr

import aiosmtplib

from mailhub.delivery.smtp_pool import IDLE_TIMEOUT, MAX_MESSAGES, SmtpPool, close_now
from mailhub.errors import ConfigurationFailure, DeliveryError, PermanentFailure, TransientFailure
from mailhub.settings import Settings
from mailhub.store.tasks import Attempt

PLACEHOLDER = "{username}"
_EXTENSION_MISSING = re.compile(r"(STARTTLS|AUTH) extension (is )?not supported")


def render_body(body: str, username: str) -> str:
    """Replace `{username}` with the literal name; nothing else is interpreted."""
    return body.replace(PLACEHOLDER, username)


#: Headers whose values repeat from mail to mail (the sender, a form's usual
#: recipient, the date within a second, the MIME headers); Subject and
#: Message-ID are new every time and not worth keeping.
_REPEATING = frozenset({"from", "to", "date", "mime-version", "content-type", "content-transfer-encoding"})
#: Parsed headers kept before the cache starts over.
_CACHE_SIZE = 1024


class _FoldedOnceHeader(BaseHeader):
    """A header that remembers its folded form for each way of folding it."""

    def fold(self, *, policy: Policy) -> str:
        key = (policy.linesep, getattr(policy, "utf8", False), policy.max_line_length)
        folds = self.__dict__.setdefault("_folds", {})
        if key not in folds:
            folds[key] = super().fold(policy=policy)
        return folds[key]


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard header classes and parsed headers, each built once.

    HeaderRegistry makes a new class on every lookup, and parsing and folding
    an address header costs more than the rest of the message. Parsed headers
    are immutable, so a repeating one is parsed and folded once. The output
    is unchanged.
    """

    def __init__(self) -> None:
        super().__init__(base_class=_FoldedOnceHeader)
        self._parsed: dict[tuple[str, str], BaseHeader] = {}

    @functools.cache  # noqa: B019 - one registry for the process
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)

    def __call__(self, name: str, value: str) -> BaseHeader:
        if name.lower() not in _REPEATING:
            return super().__call__(name, value)
        key = (name, value)
        header = self._parsed.get(key)
        if header is None:
            if len(self._parsed) >= _CACHE_SIZE:
                self._parsed.clear()  # simpler than LRU: the repeating few come back at once
            header = self._parsed[key] = super().__call__(name, value)
        return header


_POLICY = policy.default.clone(header_factory=_CachedHeaderRegistry())


def build_message(attempt: Attempt, mail_from: str) -> EmailMessage:
    """The mail of an attempt: UTF-8 text (and its HTML alternative), the task's Message-ID.

    From is always `mail_from`'s address (DMARC); a form may only give it a
    display name. A form's body is final: `{username}` is not replaced in it.
    """
    message = EmailMessage(policy=_POLICY)
    message["From"] = _sender(mail_from, attempt.from_name)
    message["To"] = attempt.to
    if attempt.reply_to:
        message["Reply-To"] = attempt.reply_to
    message["Subject"] = attempt.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = attempt.message_id
    body = attempt.body if attempt.rendered else render_body(attempt.body, attempt.username)
    message.set_content(body, charset="utf-8")
    if attempt.html:
        message.add_alternative(attempt.html, subtype="html", charset="utf-8")
    return message


def _sender(mail_from: str, display_name: str) -> str:
    if not display_name:
        return mail_from
    return str(Address(display_name=display_name, addr_spec=parseaddr(mail_from)[1]))


def classify(exc: Exception) -> DeliveryError:
    """Map an aiosmtplib or network exception to the kind of failure it is."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return ConfigurationFailure(f"SMTP login refused: {exc.code} {exc.message}".strip())
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return ConfigurationFailure(f"TLS failed: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException) and _EXTENSION_MISSING.search(str(exc)):
        return ConfigurationFailure(f"the SMTP server lacks what the settings ask for: {exc}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        replies = [f"{r.code} {r.message}" for r in exc.recipients]
        reason = "recipient refused: " + "; ".join(replies)
        if all(r.code >= 500 for r in exc.recipients):
            return PermanentFailure(reason)
        return TransientFailure(reason)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reason = f"{exc.code} {exc.message}".strip()
        if exc.code >= 500:
            return PermanentFailure(reason)
        return TransientFailure(reason)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return PermanentFailure(f"the SMTP server cannot take this mail: {exc}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return TransientFailure(f"timed out talking to the SMTP server: {exc}")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientFailure(f"connection lost: {exc}")
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return TransientFailure(f"{type(exc).__name__}: {exc}")
    raise exc


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
        """Deliver the attempt's mail; raise a `DeliveryError` if it did not go."""
        message = build_message(attempt, self.settings.mail_from)
        try:
            await self.pool.send(message)
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
