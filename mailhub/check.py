"""`python run.py check`: try the Redis and SMTP settings before going live.

Each step is tried for real (PING, and what the Redis does with queued mail,
see `store.redis_check`; connect, TLS, login, MAIL FROM then RSET; no mail
is sent) and reported as ok, warn or FAIL, with a hint for the usual
mistakes. The exit code is 1 if any step failed.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from email.utils import parseaddr
from enum import Enum
from typing import TextIO

import aiosmtplib
from redis.exceptions import RedisError

from mailhub.delivery.smtp_pool import close_now
from mailhub.settings import Settings
from mailhub.store import redis_check, redis_client
from mailhub.store.redis_check import Level

#: The longest a check waits for any one reply: a wrong TLS mode shows as silence.
CHECK_TIMEOUT = 10.0


class Outcome(str, Enum):
    OK = "ok"  #: works
    WARN = "warn"  #: works, but probably not as intended
    FAIL = "FAIL"  #: does not work; mail will not go


@dataclass(frozen=True)
class Step:
    """One line of the report."""

    name: str
    outcome: Outcome
    detail: str
    hint: str = ""


class _Stop(Exception):
    """A failed SMTP step: the later ones cannot be tried."""


async def run_checks(settings: Settings) -> list[Step]:
    """Try Redis, then the SMTP server, and say how each step went; then list the forms."""
    steps = [*await check_redis(settings), *await check_smtp(settings)]
    forms = check_forms(settings)
    return [*steps, forms] if forms is not None else steps


def check_forms(settings: Settings) -> Step | None:
    """The forms FORMS_FILE defines (a bad file never gets here: start-up refuses it), or None."""
    if not settings.forms:
        return None
    source = f"FORMS_FILE={settings.forms_file}" if settings.forms_file else "capture mode's example"
    described = "; ".join(
        f"{form.form_id} -> {', '.join(form.to)}" + (f" ({form.captcha})" if form.captcha else "")
        for form in settings.forms.values()
    )
    open_forms = [
        form.form_id
        for form in settings.forms.values()
        if not (form.captcha or form.rate_windows or form.origins)
    ]
    if open_forms and not settings.capture_mode:
        return Step(
            "forms",
            Outcome.WARN,
            f"{source}: {described}",
            f"{', '.join(open_forms)}: no captcha, origins or rate_limit; only RATE_LIMIT holds bots back",
        )
    return Step("forms", Outcome.OK, f"{source}: {described}")


_OUTCOMES = {Level.OK: Outcome.OK, Level.WARN: Outcome.WARN, Level.REFUSE: Outcome.FAIL}


async def check_redis(settings: Settings) -> list[Step]:
    """PING the configured Redis and say whether it keeps queued mail; or note the embedded one."""
    if settings.embedded_redis:
        return [
            Step(
                "Redis",
                Outcome.OK,
                "REDIS_URL is not set: `python run.py` starts an embedded Valkey in "
                f"{settings.data_dir}/valkey",
                "separate `web` and `worker` processes need a shared REDIS_URL (or REDIS_SENTINELS)",
            )
        ]
    where = redis_client.describe(settings)
    redis = redis_client.from_settings(settings)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await redis.ping()
            findings = await redis_check.inspect(redis, allow_eviction=settings.redis_allow_eviction)
    except (RedisError, OSError, TimeoutError) as exc:
        return [Step("Redis", Outcome.FAIL, f"{where}: {exc or 'no answer'}", _unreachable_hint(settings))]
    finally:
        await redis.aclose()
    version, *rest = findings
    steps = [Step("Redis", _OUTCOMES[version.level], f"{where} answers ({version.text})")]
    return steps + [Step(finding.topic, _OUTCOMES[finding.level], finding.text) for finding in rest]


def _unreachable_hint(settings: Settings) -> str:
    if settings.redis_sentinels:
        return (
            "do the sentinels answer, and do they monitor a primary by the name REDIS_SENTINEL_MASTER? "
            "(REDIS_SENTINEL_PASSWORD for them, REDIS_PASSWORD for the primary)"
        )
    return "is Redis running and reachable? REDIS_URL looks like redis://[:password@]host:6379/0"


async def check_smtp(settings: Settings) -> list[Step]:
    """Connect, secure, log in and offer a sender, stopping at the first failure."""
    if settings.capture_mode:
        return [
            Step(
                "SMTP",
                Outcome.FAIL,
                "SMTP_HOST is not set: mail is captured, not delivered",
                "set SMTP_HOST, SMTP_PORT, SMTP_USER and SMTP_PASS for your provider",
            )
        ]
    steps: list[Step] = []
    settings = replace(settings, smtp_timeout=min(settings.smtp_timeout, CHECK_TIMEOUT))
    # STARTTLS and login are left to the steps, so a failure names its step.
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        use_tls=settings.smtp_tls == "ssl",
        start_tls=False,
        tls_context=ssl.create_default_context(),
        timeout=settings.smtp_timeout,
    )
    try:
        for step in (_connect, _secure, _login, _sender):
            steps.append(await step(smtp, settings))
    except _Stop as stop:
        steps.append(stop.args[0])
    finally:
        close_now(smtp)
    return steps


async def _connect(smtp: aiosmtplib.SMTP, settings: Settings) -> Step:
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    implicit = " with implicit TLS" if settings.smtp_tls == "ssl" else ""
    reply = await _try("SMTP connect", smtp.connect(), settings)
    return Step("SMTP connect", Outcome.OK, f"{where}{implicit}: {reply.message.splitlines()[0]}")


async def _secure(smtp: aiosmtplib.SMTP, settings: Settings) -> Step:
    if settings.smtp_tls == "ssl":
        return Step("TLS", Outcome.OK, f"implicit TLS, {_tls_version(smtp)}, certificate verified")
    await _try("TLS", smtp.ehlo(), settings)
    if settings.smtp_tls == "none":
        if smtp.supports_extension("starttls"):
            return Step(
                "TLS",
                Outcome.WARN,
                "SMTP_TLS=none: password and mail go unencrypted",
                "the server offers STARTTLS: set SMTP_TLS=starttls",
            )
        return Step(
            "TLS",
            Outcome.WARN,
            "SMTP_TLS=none: password and mail go unencrypted",
            "use SMTP_TLS=none only with a relay on a trusted network",
        )
    if not smtp.supports_extension("starttls"):
        raise _Stop(
            Step(
                "TLS",
                Outcome.FAIL,
                "the server does not offer STARTTLS",
                _tls_mode_hint(settings, wrong="starttls"),
            )
        )
    await _try("TLS", smtp.starttls(), settings)
    return Step("TLS", Outcome.OK, f"STARTTLS, {_tls_version(smtp)}, certificate verified")


async def _login(smtp: aiosmtplib.SMTP, settings: Settings) -> Step:
    if not settings.smtp_user:
        return Step(
            "login",
            Outcome.WARN,
            "SMTP_USER is not set: sending without login",
            "fine for a relay that trusts this host; providers need SMTP_USER and SMTP_PASS",
        )
    await _try("login", smtp.login(settings.smtp_user, settings.smtp_pass), settings)
    return Step("login", Outcome.OK, f"logged in as {settings.smtp_user}")


async def _sender(smtp: aiosmtplib.SMTP, settings: Settings) -> Step:
    address = settings.mail_from
    await _try("sender", smtp.mail(parseaddr(address)[1]), settings)
    await _try("sender", smtp.rset(), settings)
    return Step("sender", Outcome.OK, f"MAIL FROM {address} accepted (nothing was sent)")


async def _try(
    name: str, call: Awaitable[aiosmtplib.SMTPResponse], settings: Settings
) -> aiosmtplib.SMTPResponse:
    try:
        return await call
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise _Stop(Step(name, Outcome.FAIL, _describe(exc), hint_for(exc, name, settings))) from exc


def hint_for(exc: Exception, step: str, settings: Settings) -> str:
    """What most often causes `exc` at `step`, in the owner's terms."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            "the server's certificate is not trusted here: for a private CA set "
            "SSL_CERT_FILE=/path/to/ca.pem; check that SMTP_HOST is the name on the certificate"
        )
    if isinstance(cause, ssl.SSLError):
        return _tls_mode_hint(settings, wrong=settings.smtp_tls)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return _login_hint(settings.smtp_host)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError) and step == "SMTP connect":
        return "no greeting: " + _tls_mode_hint(settings, wrong=settings.smtp_tls)
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return (
            f"nothing answers on {settings.smtp_host}:{settings.smtp_port}: check SMTP_HOST "
            "and SMTP_PORT (587 for STARTTLS, 465 for implicit TLS) and any firewall"
        )
    if step == "login" and "AUTH" in str(exc):
        if settings.smtp_tls == "none":
            return "servers offer login only over TLS: set SMTP_TLS=starttls (or ssl on port 465)"
        return "the server offers no login here: check SMTP_PORT (submission is 587 or 465)"
    if step == "sender":
        return "the server refuses MAIL_FROM: most providers want the account's own address"
    return ""


def _tls_mode_hint(settings: Settings, *, wrong: str) -> str:
    if wrong == "ssl":
        return "the server does not speak TLS at once: port 587 (and 25) use STARTTLS, set SMTP_TLS=starttls"
    if settings.smtp_port == 465:
        return "port 465 means implicit TLS: set SMTP_TLS=ssl"
    return "if this port expects TLS at once (usually 465), set SMTP_TLS=ssl; 587 means STARTTLS"


_LOGIN_HINTS = {
    ("gmail.com", "googlemail.com"): "Gmail needs an app password (Google Account > Security > "
    "2-Step Verification > App passwords), not your account password",
    ("office365.com", "outlook.com"): "Office 365 needs SMTP AUTH enabled for the mailbox, "
    "and an app password if multi-factor sign-in is on",
    ("amazonaws.com",): "Amazon SES wants SMTP credentials made in the SES console, not your AWS access keys",
    ("mailgun.org",): "Mailgun wants the SMTP credentials of the sending domain",
}


def _login_hint(host: str) -> str:
    for domains, hint in _LOGIN_HINTS.items():
        if any(host.endswith(domain) for domain in domains):
            return hint
    return "check SMTP_USER and SMTP_PASS (many providers want an app password or SMTP key)"


def _describe(exc: Exception) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}".strip()
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and str(cause) not in str(exc):
        return f"{exc} ({cause})"
    return str(exc)


def _tls_version(smtp: aiosmtplib.SMTP) -> str:
    ssl_object = smtp.get_transport_info("ssl_object")
    return ssl_object.version() if ssl_object is not None else "TLS"


def report(steps: list[Step], out: TextIO) -> int:
    """Print the steps; return the exit code (1 if any failed)."""
    width = max(len(step.name) for step in steps)
    for step in steps:
        print(f"  {step.outcome.value:<4}  {step.name:<{width}}  {step.detail}", file=out)
        if step.hint:
            print(f"        {'':<{width}}  hint: {step.hint}", file=out)
    failed = any(step.outcome is Outcome.FAIL for step in steps)
    print("Some checks failed." if failed else "All checks passed.", file=out)
    return 1 if failed else 0


def main(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Run every check and print the report; the exit code of `run.py check`."""
    print(f"Checking the settings mailhub would use (SMTP_TLS={settings.smtp_tls}):", file=out)
    return report(asyncio.run(run_checks(settings)), out)
