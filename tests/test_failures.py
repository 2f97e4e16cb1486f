"""Failure classes: each aiosmtplib exception and reply code, and what it means for the mail."""

from __future__ import annotations

import ssl
from dataclasses import replace

import aiosmtplib
import pytest

from mailhub.delivery.failures import classify
from mailhub.delivery.sender import SmtpSender
from mailhub.errors import ConfigurationFailure, PermanentFailure, Throttled, TransientFailure
from tests.helpers import settings_for
from tests.smtp_server import SmtpServer


def _from_ssl() -> aiosmtplib.SMTPConnectError:
    """A connect error raised from a TLS handshake failure, as aiosmtplib raises it."""
    error = aiosmtplib.SMTPConnectError("Error connecting to 127.0.0.1 on port 465")
    error.__cause__ = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    return error


def _refused(*codes: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(code, "no", f"r{code}@example.com") for code in codes]
    )


CASES = [
    # The owner's setup: no mail is failed for it, sending pauses.
    (
        aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"),
        ConfigurationFailure,
        "login refused: 535",
    ),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), ConfigurationFailure, "TLS failed"),
    (_from_ssl(), ConfigurationFailure, "TLS failed"),
    (
        aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server."),
        ConfigurationFailure,
        "lacks what the settings ask for",
    ),
    (
        aiosmtplib.SMTPException("The SMTP AUTH extension is not supported by this server."),
        ConfigurationFailure,
        "lacks what the settings ask for",
    ),
    # The receiving server said no for good: a 5xx.
    (_refused(550), PermanentFailure, "recipient refused: 550 no"),
    (_refused(550, 551), PermanentFailure, "550 no; 551 no"),
    (aiosmtplib.SMTPDataError(554, "5.7.1 rejected as spam"), PermanentFailure, "554 5.7.1 rejected as spam"),
    (aiosmtplib.SMTPSenderRefused(553, "5.1.8 sender refused", "a@example.com"), PermanentFailure, "553"),
    (aiosmtplib.SMTPResponseException(500, "5.5.1 command unrecognized"), PermanentFailure, "500"),
    (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"), PermanentFailure, "SMTPUTF8"),
    # Later may work: a 4xx, or trouble on the way.
    (_refused(450), TransientFailure, "recipient refused: 450 no"),
    (_refused(550, 450), TransientFailure, "550 no; 450 no"),
    (aiosmtplib.SMTPDataError(451, "4.3.0 try again later"), TransientFailure, "451 4.3.0 try again later"),
    (_refused(452), TransientFailure, "recipient refused: 452 no"),
    # ...and a throttling reply: the server asks every send to slow down.
    (aiosmtplib.SMTPDataError(451, "4.7.1 try again later"), Throttled, "451 4.7.1 try again later"),
    (aiosmtplib.SMTPResponseException(421, "4.3.2 closing"), Throttled, "421 4.3.2 closing"),
    (
        aiosmtplib.SMTPDataError(454, "Throttling failure: Maximum sending rate exceeded."),
        Throttled,
        "454 Throttling failure",
    ),
    (aiosmtplib.SMTPSenderRefused(450, "4.2.1 too many messages", "a@example.com"), Throttled, "450"),
    (_refused(550, 421), Throttled, "550 no; 421 no"),
    (aiosmtplib.SMTPTimeoutError("timed out"), TransientFailure, "timed out talking"),
    (aiosmtplib.SMTPReadTimeoutError("read timed out"), TransientFailure, "timed out talking"),
    (TimeoutError(), TransientFailure, "timed out talking"),
    (aiosmtplib.SMTPServerDisconnected("Connection lost"), TransientFailure, "connection lost"),
    (aiosmtplib.SMTPConnectError("Error connecting"), TransientFailure, "SMTPConnectError"),
    (ConnectionRefusedError(111, "Connection refused"), TransientFailure, "ConnectionRefusedError"),
    (ConnectionResetError(104, "reset by peer"), TransientFailure, "ConnectionResetError"),
]


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    CASES,
    ids=[f"{type(error).__name__}-{kind.__name__}" for error, kind, _ in CASES],
)
def test_each_exception_maps_to_its_failure_class(error, kind, reason):
    failure = classify(error)
    assert type(failure) is kind
    assert reason in failure.reason


def test_anything_else_is_not_swallowed():
    with pytest.raises(ValueError, match="a bug"):
        classify(ValueError("a bug"))


async def test_a_server_without_starttls_is_a_configuration_failure(tls_material, trust_test_ca, valkey):
    with SmtpServer(tls_material, tls="starttls", starttls_offered=False, user=None) as server:
        settings = replace(settings_for(server, redis_url=valkey.url), smtp_tls="starttls")
        sender = SmtpSender(settings)
        try:
            with pytest.raises(ConfigurationFailure, match="STARTTLS extension not supported"):
                await sender.verify()
        finally:
            await sender.close()
