"""Settings: read from the environment, then `.env`, then defaults.

Every value is cast and checked once, at start-up; a bad value raises
`SettingsError` with a one-line message naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from limits import parse_many

from mailhub.errors import SettingsError
from mailhub.forms.definitions import CAPTCHAS, FormDefinition, capture_contact_form, load_forms_file

T = TypeVar("T")
Number = TypeVar("Number", int, float)

TLS_MODES = ("starttls", "ssl", "none")


@dataclass(frozen=True)
class Settings:
    """Everything mailhub can be told, with the defaults of a zero-config run."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: `run.py worker` only: serve /healthz, /readyz and /metrics on this port.
    metrics_port: int | None = None
    #: Set: /metrics needs it as a Bearer token, and /readyz shows its causes to it.
    metrics_token: str = field(default="", repr=False)
    #: Empty (and no `redis_sentinels`): start an embedded Valkey server in `data_dir`.
    redis_url: str = ""
    #: Sentinels (host, port) to ask for the primary instead of `redis_url`.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    #: The name the sentinels monitor the primary under.
    redis_sentinel_master: str = ""
    redis_sentinel_password: str = field(default="", repr=False)
    #: The password of the primary and its replicas when found through the sentinels.
    redis_password: str = field(default="", repr=False)
    #: Replicas a submit's write must reach before `queued` is answered; None: 1 if the
    #: primary has any, else 0.
    redis_min_replicas: int | None = None
    #: Seconds a submit waits for the replicas to confirm its write (else 503).
    redis_wait_timeout: float = 0.5
    #: Start even on a Redis that may evict keys (queued mail) when its memory is full.
    redis_allow_eviction: bool = False
    data_dir: Path = Path("mailhub-data")
    #: Empty: start a capture SMTP server; mail is shown at /dev/inbox, not delivered.
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_pass: str = field(default="", repr=False)
    smtp_tls: str = "starttls"
    smtp_timeout: float = 30.0
    #: Open SMTP connections kept and reused by each worker process.
    smtp_pool_size: int = 16
    #: Sends allowed to start, all workers together, e.g. "14/second;500/hour"; "" for no pace.
    smtp_rate: str = ""
    #: Seconds no send starts after a throttling reply; doubles while they keep coming.
    smtp_throttle_pause: float = 2.0
    #: Seconds without a new throttling reply after which the slowed pace is lifted.
    smtp_throttle_recovery: float = 60.0
    mail_from: str = "mailhub@localhost"
    max_attempts: int = 3
    #: First retry delay in seconds; each later one doubles, with jitter.
    retry_base_delay: float = 2.0
    retry_max_delay: float = 600.0
    worker_concurrency: int = 16
    #: A queue entry held this long by a silent worker is taken over by another.
    claim_timeout: float = 60.0
    shutdown_grace: float = 25.0
    result_retention: int = 7 * 24 * 3600
    log_level: str = "INFO"
    #: "text" for people, "json" for log collectors.
    log_format: str = "text"
    #: Seconds between keep-alive comments on an idle SSE stream (and WebSocket pings).
    sse_keepalive: float = 15.0
    #: The recipient the demo form at / is prefilled with.
    demo_recipient: str = "you@example.com"
    #: Mail not delivered this long after it was accepted is failed, not sent late.
    max_queue_age: int = 24 * 3600
    #: While a login or TLS failure pauses sending, re-check the SMTP login this often.
    smtp_recheck_interval: float = 30.0
    #: Addresses and @domains mail may go to; ("*",) allows any (API keys then required).
    allowed_recipients: tuple[str, ...] = ()
    #: Bearer tokens; when any is set, every submit must carry one.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    #: Per client address, e.g. "10/minute;100/day", or "off".
    rate_limit: str = "10/minute;100/day"
    #: Proxies (addresses or networks) whose X-Forwarded-For is believed.
    trusted_proxies: tuple[str, ...] = ()
    #: Origins (scheme://host[:port]) whose pages may call the API.
    cors_origins: tuple[str, ...] = ()
    #: A hidden form field; a submission that fills it is dropped quietly. Empty: off.
    honeypot_field: str = ""
    #: The TOML file defining the server-side forms (None: no file).
    forms_file: Path | None = None
    #: The forms, by id: from `forms_file`, or capture mode's example `contact` form.
    #: Derived from the other settings, so left out of comparisons.
    forms: Mapping[str, FormDefinition] = field(default_factory=dict, repr=False, hash=False, compare=False)
    #: CAPTCHA secrets by provider (turnstile, hcaptcha, recaptcha).
    captcha_secrets: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    #: Empty: each provider's own siteverify URL; set, every CAPTCHA is verified there.
    captcha_verify_url: str = ""
    #: Open SSE streams plus WebSockets one client address may hold on one web process.
    max_streams_per_client: int = 20
    #: Seconds an idle connection stays open; also the time a client has to send a request's headers.
    keepalive_timeout: float = 5.0
    #: Seconds a client has to send a request's body once its headers arrived.
    body_timeout: float = 10.0
    #: Where delivered/failed mail and paused/resumed sending are POSTed (Standard Webhooks).
    webhook_urls: tuple[str, ...] = ()
    #: `whsec_<base64>`: the key webhooks are signed with (required with `webhook_urls`).
    webhook_secret: str = field(default="", repr=False)
    #: Seconds one webhook POST may take before it counts as failed.
    webhook_timeout: float = 10.0
    #: The first webhook retry waits about this long; later ones follow `notify.schedule`.
    webhook_retry_base_delay: float = 5.0
    #: Seconds a webhook is retried before it is dropped (and counted).
    webhook_max_age: float = 24 * 3600
    #: The owner's address: a mail when sending pauses and resumes, digests of failed mail.
    alert_email: str = ""
    #: At most one digest of failed mail per this many seconds.
    alert_interval: float = 3600.0
    #: Set: the admin API and the /admin dashboard, behind this Bearer token.
    admin_token: str = field(default="", repr=False)

    @property
    def capture_mode(self) -> bool:
        """True when no SMTP server is configured: mail is captured locally."""
        return not self.smtp_host

    @property
    def embedded_redis(self) -> bool:
        """True when no Redis is configured: `run.py` starts an embedded Valkey."""
        return not self.redis_url and not self.redis_sentinels


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Build `Settings` from `environ` (default: os.environ), then `env_file`."""
    env = dict(os.environ if environ is None else environ)
    if env_file is not None and Path(env_file).is_file():
        for key, value in dotenv_values(env_file).items():
            if value is not None:
                env.setdefault(key, value)
    return _parse(_Reader(env))


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, cast: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name, "").strip()
        if raw == "":
            return default
        try:
            return cast(raw)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{name}={raw!r} is invalid: {exc}") from None


def _positive(cast: Callable[[str], Number]) -> Callable[[str], Number]:
    def parse(raw: str) -> Number:
        value = cast(raw)
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    return parse


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a port number between 1 and 65535")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw.lower()

    return parse


def _address(raw: str) -> str:
    if "@" not in parseaddr(raw)[1]:
        raise ValueError("must be an email address, e.g. Site <noreply@example.com>")
    return raw


def _bare_address(raw: str) -> str:
    return parseaddr(_address(raw))[1]


def _list(cast: Callable[[str], str]) -> Callable[[str], tuple[str, ...]]:
    def parse(raw: str) -> tuple[str, ...]:
        return tuple(cast(item.strip()) for item in raw.split(",") if item.strip())

    return parse


def _recipient(raw: str) -> str:
    if raw == "*" or (raw.startswith("@") and "." in raw) or "@" in raw[1:]:
        return raw.lower()
    raise ValueError(f"{raw!r} is neither an address, an @domain nor *")


def _network(raw: str) -> str:
    return str(ipaddress.ip_network(raw, strict=False))


def _origin(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"{raw!r} is not an origin like https://www.example.com")
    return f"{parts.scheme}://{parts.netloc}".lower()


#: Characters an ADMIN_TOKEN has at least: too long to guess online.
MIN_SECRET_LENGTH = 16


def _secret(name: str, value: str) -> str:
    """`value`, if empty or long enough to be a secret; the message never repeats it."""
    if value and (len(value) < MIN_SECRET_LENGTH or not value.isprintable()):
        raise SettingsError(
            f"{name} is too weak: use at least {MIN_SECRET_LENGTH} printable characters, e.g. "
            "the output of python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


def _rate_limit(raw: str) -> str:
    if raw.lower() == "off":
        return "off"
    parse_many(raw)
    return raw


def _host_port(raw: str) -> tuple[str, int]:
    host, colon, port = raw.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:26379
    if not colon or not host:
        raise ValueError(f"{raw!r} is not host:port")
    return host, _port(port)


def _host_ports(raw: str) -> tuple[tuple[str, int], ...]:
    return tuple(_host_port(item.strip()) for item in raw.split(",") if item.strip())


def _replicas(raw: str) -> int | None:
    if raw.lower() == "auto":
        return None
    value = int(raw)
    if value < 0:
        raise ValueError("must be auto, 0 or more")
    return value


def _flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def _send_rate(raw: str) -> str:
    """SMTP_RATE: like RATE_LIMIT; `off` (or nothing) sends as fast as the worker can."""
    return "" if raw.lower() == "off" else _rate_limit(raw)


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return raw


def _webhook_secret(raw: str) -> str:
    """`whsec_` and the base64 of 24 to 64 random bytes (the Standard Webhooks format).

    The message never repeats the value: it is a secret.
    """
    if not raw:
        return raw
    try:
        if not raw.startswith("whsec_"):
            raise ValueError
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        raise SettingsError(
            "WEBHOOK_SECRET is invalid: it must be whsec_ followed by base64, e.g. from "
            "python -c \"import base64,os;print('whsec_'+base64.b64encode(os.urandom(32)).decode())\""
        ) from None
    if not 24 <= len(key) <= 64:
        raise SettingsError(f"WEBHOOK_SECRET is invalid: it holds {len(key)} bytes; use 24 to 64 random ones")
    return raw


def _forms(settings: Settings) -> dict[str, FormDefinition]:
    """The forms of FORMS_FILE; with none and nothing configured, the example `contact` form."""
    if settings.forms_file is not None:
        return load_forms_file(settings.forms_file, settings.captcha_secrets)
    if settings.capture_mode:
        return {"contact": capture_contact_form(settings.demo_recipient)}
    return {}


def _check_abuse_settings(settings: Settings) -> None:
    """Refuse to start as an open relay through the owner's SMTP account."""
    if settings.capture_mode:
        return
    # A forms-only deployment: the forms fix their recipients, the contract
    # endpoint refuses every recipient.
    if not settings.allowed_recipients and settings.forms_file is None:
        raise SettingsError(
            "ALLOWED_RECIPIENTS is empty: with a real SMTP server anyone could send mail "
            "through your account; list the addresses or @domains mail may go to "
            "(or set ALLOWED_RECIPIENTS=* together with API_KEYS, or use only FORMS_FILE)"
        )
    if "*" in settings.allowed_recipients and not settings.api_keys:
        raise SettingsError(
            "ALLOWED_RECIPIENTS=* lets a submit reach any address, so API_KEYS "
            "must be set: every submit then needs one"
        )


def _check_redis_settings(settings: Settings) -> None:
    """One way to reach Redis: a URL, or the sentinels and the name they know the primary by."""
    if settings.redis_sentinels and settings.redis_url:
        raise SettingsError(
            "REDIS_URL and REDIS_SENTINELS are both set: use REDIS_URL for one Redis, or "
            "REDIS_SENTINELS with REDIS_SENTINEL_MASTER to follow a primary Sentinel names"
        )
    if bool(settings.redis_sentinels) != bool(settings.redis_sentinel_master):
        raise SettingsError(
            "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together: the sentinels' host:port "
            "list, and the name they monitor the primary under"
        )


def _parse(env: _Reader) -> Settings:
    d = Settings()
    smtp_host = env.get("SMTP_HOST", str, d.smtp_host)
    smtp_port = env.get("SMTP_PORT", _port, d.smtp_port)
    smtp_user = env.get("SMTP_USER", str, d.smtp_user)
    smtp_pass = env.get("SMTP_PASS", str, d.smtp_pass)
    if smtp_user and not smtp_pass:
        raise SettingsError("SMTP_PASS is missing: SMTP_USER is set, so a password is needed")
    default_tls = "ssl" if smtp_port == 465 else "starttls"
    worker_concurrency = env.get("WORKER_CONCURRENCY", _positive(int), d.worker_concurrency)
    settings = Settings(
        host=env.get("HOST", str, d.host),
        port=env.get("PORT", _port, d.port),
        metrics_port=env.get("METRICS_PORT", _port, d.metrics_port),
        metrics_token=env.get("METRICS_TOKEN", str, d.metrics_token),
        redis_url=env.get("REDIS_URL", str, d.redis_url),
        redis_sentinels=env.get("REDIS_SENTINELS", _host_ports, d.redis_sentinels),
        redis_sentinel_master=env.get("REDIS_SENTINEL_MASTER", str, d.redis_sentinel_master),
        redis_sentinel_password=env.get("REDIS_SENTINEL_PASSWORD", str, d.redis_sentinel_password),
        redis_password=env.get("REDIS_PASSWORD", str, d.redis_password),
        redis_min_replicas=env.get("REDIS_MIN_REPLICAS", _replicas, d.redis_min_replicas),
        redis_wait_timeout=env.get("REDIS_WAIT_TIMEOUT", _positive(float), d.redis_wait_timeout),
        redis_allow_eviction=env.get("REDIS_ALLOW_EVICTION", _flag, d.redis_allow_eviction),
        data_dir=env.get("DATA_DIR", Path, d.data_dir),
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        smtp_user=smtp_user,
        smtp_pass=smtp_pass,
        smtp_tls=env.get("SMTP_TLS", _choice(*TLS_MODES), default_tls),
        smtp_timeout=env.get("SMTP_TIMEOUT", _positive(float), d.smtp_timeout),
        # One connection per send slot unless told otherwise: a send never waits for one.
        smtp_pool_size=env.get("SMTP_POOL_SIZE", _positive(int), worker_concurrency),
        smtp_rate=env.get("SMTP_RATE", _send_rate, d.smtp_rate),
        smtp_throttle_pause=env.get("SMTP_THROTTLE_PAUSE", _positive(float), d.smtp_throttle_pause),
        smtp_throttle_recovery=env.get("SMTP_THROTTLE_RECOVERY", _positive(float), d.smtp_throttle_recovery),
        mail_from=env.get("MAIL_FROM", _address, smtp_user or d.mail_from),
        max_attempts=env.get("MAX_ATTEMPTS", _positive(int), d.max_attempts),
        retry_base_delay=env.get("RETRY_BASE_DELAY", _positive(float), d.retry_base_delay),
        retry_max_delay=env.get("RETRY_MAX_DELAY", _positive(float), d.retry_max_delay),
        worker_concurrency=worker_concurrency,
        claim_timeout=env.get("CLAIM_TIMEOUT", _positive(float), d.claim_timeout),
        shutdown_grace=env.get("SHUTDOWN_GRACE", _positive(float), d.shutdown_grace),
        result_retention=env.get("RESULT_RETENTION", _positive(int), d.result_retention),
        log_level=env.get("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info").upper(),
        sse_keepalive=env.get("SSE_KEEPALIVE", _positive(float), d.sse_keepalive),
        demo_recipient=env.get("DEMO_RECIPIENT", _address, d.demo_recipient),
        log_format=env.get("LOG_FORMAT", _choice("text", "json"), d.log_format),
        max_queue_age=env.get("MAX_QUEUE_AGE", _positive(int), d.max_queue_age),
        smtp_recheck_interval=env.get("SMTP_RECHECK_INTERVAL", _positive(float), d.smtp_recheck_interval),
        allowed_recipients=env.get("ALLOWED_RECIPIENTS", _list(_recipient), ()),
        api_keys=env.get("API_KEYS", _list(str), ()),
        rate_limit=env.get("RATE_LIMIT", _rate_limit, d.rate_limit),
        trusted_proxies=env.get("TRUSTED_PROXIES", _list(_network), ()),
        cors_origins=env.get("CORS_ORIGINS", _list(_origin), ()),
        honeypot_field=env.get("HONEYPOT_FIELD", str, d.honeypot_field),
        forms_file=env.get("FORMS_FILE", Path, d.forms_file),
        captcha_secrets={
            name: secret for name in CAPTCHAS if (secret := env.get(f"{name.upper()}_SECRET", str, ""))
        },
        captcha_verify_url=env.get("CAPTCHA_VERIFY_URL", _http_url, d.captcha_verify_url),
        max_streams_per_client=env.get("MAX_STREAMS_PER_CLIENT", _positive(int), d.max_streams_per_client),
        keepalive_timeout=env.get("KEEPALIVE_TIMEOUT", _positive(float), d.keepalive_timeout),
        body_timeout=env.get("BODY_TIMEOUT", _positive(float), d.body_timeout),
        webhook_urls=env.get("WEBHOOK_URL", _list(_http_url), ()),
        webhook_secret=_webhook_secret(env.get("WEBHOOK_SECRET", str, "")),
        webhook_timeout=env.get("WEBHOOK_TIMEOUT", _positive(float), d.webhook_timeout),
        webhook_retry_base_delay=env.get(
            "WEBHOOK_RETRY_BASE_DELAY", _positive(float), d.webhook_retry_base_delay
        ),
        webhook_max_age=env.get("WEBHOOK_MAX_AGE", _positive(float), d.webhook_max_age),
        alert_email=env.get("ALERT_EMAIL", _bare_address, d.alert_email),
        alert_interval=env.get("ALERT_INTERVAL", _positive(float), d.alert_interval),
        admin_token=_secret("ADMIN_TOKEN", env.get("ADMIN_TOKEN", str, d.admin_token)),
    )
    if settings.webhook_urls and not settings.webhook_secret:
        raise SettingsError("WEBHOOK_SECRET is missing: WEBHOOK_URL is set, and every webhook is signed")
    settings = replace(settings, forms=_forms(settings))
    _check_abuse_settings(settings)
    _check_redis_settings(settings)
    # A send can take SMTP_TIMEOUT, plus as long again to reset a refused transaction.
    if settings.claim_timeout < 2 * settings.smtp_timeout:
        raise SettingsError(
            "CLAIM_TIMEOUT must be at least twice SMTP_TIMEOUT, or a slow send "
            "is taken over by another worker while it is still running"
        )
    return settings
