"""What kind of failure an SMTP or network exception is: transient, permanent or the owner's setup."""

from __future__ import annotations

import re
import ssl

import aiosmtplib

from mailhub.errors import ConfigurationFailure, DeliveryError, PermanentFailure, Throttled, TransientFailure

_EXTENSION_MISSING = re.compile(r"(STARTTLS|AUTH) extension (is )?not supported")
#: "Service not available": a provider's usual answer to a sender going too fast.
_CLOSING = 421
#: Replies that mean "too fast" when their text says so (SES: 454 Throttling failure).
_MAYBE_THROTTLING = (450, 451, 454)
#: An enhanced status code of the policy class (4.7.x), or words saying "too fast".
_THROTTLING_TEXT = re.compile(
    r"^4\.7\.\d{1,3}\b|\brate\b|rate.limit|too many|throttl|slow down", re.IGNORECASE
)


def throttling(code: int, message: str) -> bool:
    """True for a reply that asks the sender to slow down rather than refusing this mail."""
    return code == _CLOSING or (code in _MAYBE_THROTTLING and bool(_THROTTLING_TEXT.search(message)))


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
        if any(throttling(r.code, r.message) for r in exc.recipients):
            return Throttled(reason)
        return TransientFailure(reason)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        reason = f"{exc.code} {exc.message}".strip()
        if exc.code >= 500:
            return PermanentFailure(reason)
        if throttling(exc.code, exc.message):
            return Throttled(reason)
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
