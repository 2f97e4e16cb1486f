"""A real SMTP server for tests: aiosmtpd in a background thread (its own event
loop) on 127.0.0.1, with trustme TLS, PLAIN/LOGIN AUTH and per-test faults."""

from __future__ import annotations

import asyncio
import email.policy
import itertools
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, Self, cast

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

TlsMode = Literal["starttls", "ssl", "none"]
FaultKind = Literal["reply_rcpt", "reply_data", "drop_after_data", "drop_before_data", "hold_data"]
_FAULT_ATTR = "_test_fault"  # the transaction's Fault, stored on aiosmtpd's Envelope


@dataclass
class TlsMaterial:
    """A throwaway CA and a server cert for ``localhost`` and ``127.0.0.1``; clients
    trust it via ``create_default_context(cafile=ca_file)`` or ``SSL_CERT_FILE``."""

    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A fresh server-side SSLContext presenting ``server_cert``."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A fresh client SSLContext trusting only this CA (hostname checked)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls_material(tmp_dir: Path) -> TlsMaterial:
    """Create a CA and a server cert; write the CA PEM to ``tmp_dir/ca.pem``."""
    ca = trustme.CA()
    ca_file = Path(tmp_dir) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsMaterial(ca, ca.issue_cert("localhost", "127.0.0.1"), ca_file)


@dataclass(frozen=True)
class Fault:
    """A canned misbehaviour for one mail transaction (see ``RecordingHandler``).

    - ``reply_rcpt(line)``: every RCPT TO of the transaction gets ``line``;
    - ``reply_data(line)``: the end of DATA gets ``line``, message not recorded;
    - ``drop_after_data()``: the message is read, put in ``handler.dropped``, then
      the connection is aborted without reply (client: SMTPServerDisconnected);
    - ``drop_before_data()``: the same abort, at MAIL FROM;
    - ``hold_data()``: the end of DATA waits for ``handler.release()``, then is accepted.
    """

    kind: FaultKind
    line: str = ""

    @classmethod
    def reply_rcpt(cls, line: str) -> Fault:
        return cls("reply_rcpt", line)

    @classmethod
    def reply_data(cls, line: str) -> Fault:
        return cls("reply_data", line)

    @classmethod
    def drop_after_data(cls) -> Fault:
        return cls("drop_after_data")

    @classmethod
    def drop_before_data(cls) -> Fault:
        return cls("drop_before_data")

    @classmethod
    def hold_data(cls) -> Fault:
        return cls("hold_data")


@dataclass(frozen=True)
class Throttle:
    """A provider's sending limit: once `per_second` mails were accepted in the last second,
    every MAIL FROM gets ``line`` (see ``RecordingHandler.throttle``)."""

    per_second: int
    line: str = "421 4.7.0 Too many messages, slow down"


@dataclass
class Captured:
    """One message as received: envelope, raw bytes (CRLF), the parsed message, when
    (``time.monotonic()``)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage = field(repr=False)
    received_at: float = 0.0


class RecordingHandler:
    """aiosmtpd handler recording mail and applying queued faults.

    ``faults`` is a FIFO: each mail transaction pops one at MAIL FROM (empty:
    behave normally) and applies it at its stage; transactions that never reach
    MAIL FROM (e.g. failed AUTH) consume nothing. ``messages`` gets accepted
    mail, ``dropped`` mail read but never answered, both under ``lock`` from the
    server thread. ``require_auth`` (set by SmtpServer): MAIL before AUTH -> 530.
    ``throttle`` (a ``Throttle``): a limit on accepted mails per second, past
    which MAIL FROM is refused; ``throttled`` counts those refusals.
    """

    def __init__(self) -> None:
        self.messages: list[Captured] = []
        self.dropped: list[Captured] = []
        self.faults: list[Fault] = []
        self.require_auth = False
        self.throttle: Throttle | None = None
        self.throttled = 0
        self.lock = threading.Lock()
        self._released = threading.Event()

    def release(self) -> None:
        """Let every held DATA (``Fault.hold_data``) go on, now and later; any thread may call it."""
        self._released.set()

    async def wait_for_count(self, n: int, timeout: float = 10.0, *, dropped: bool = False) -> list[Captured]:
        """Poll every 10 ms until ``messages`` (or ``dropped``) has >= n items;
        return a snapshot, or raise ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                items = list(self.dropped if dropped else self.messages)
            if len(items) >= n:
                return items
            if time.monotonic() >= deadline:
                which = "dropped" if dropped else "messages"
                raise TimeoutError(f"expected {n} {which}, got {len(items)}")
            await asyncio.sleep(0.01)

    def _over_throttle(self) -> bool:
        """Under ``lock``: the ``throttle``'s limit is reached for the last second."""
        if self.throttle is None:
            return False
        since = time.monotonic() - 1.0
        recent = itertools.takewhile(lambda m: m.received_at > since, reversed(self.messages))
        return sum(1 for _ in recent) >= self.throttle.per_second

    @staticmethod
    async def _drop(server: SMTP) -> str:
        """Abort the connection; SMTP.connection_lost() then cancels this task."""
        cast(asyncio.Transport, server.transport).abort()
        await asyncio.sleep(30)  # cancelled long before
        return "421 4.3.0 drop did not happen"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        with self.lock:
            if self._over_throttle():
                self.throttled += 1
                return cast(Throttle, self.throttle).line
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None and fault.kind == "drop_before_data":
            return await self._drop(server)
        setattr(envelope, _FAULT_ATTR, fault)
        return MISSING  # aiosmtpd does its default bookkeeping and replies 250

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        fault: Fault | None = getattr(envelope, _FAULT_ATTR, None)
        return fault.line if fault and fault.kind == "reply_rcpt" else MISSING

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault: Fault | None = getattr(envelope, _FAULT_ATTR, None)
        if fault and fault.kind == "reply_data":
            return fault.line
        # The test's thread releases it: an asyncio.Event belongs to one loop.
        while fault and fault.kind == "hold_data" and not self._released.is_set():  # noqa: ASYNC110 - see above
            await asyncio.sleep(0.005)
        data = envelope.original_content or b""
        message = cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))
        captured = Captured(
            envelope.mail_from or "", list(envelope.rcpt_tos), data, message, time.monotonic()
        )
        dropping = fault is not None and fault.kind == "drop_after_data"
        with self.lock:
            (self.dropped if dropping else self.messages).append(captured)
        return await self._drop(server) if dropping else "250 2.0.0 OK queued"


class SmtpServer(Controller):
    """An SMTP server on 127.0.0.1, free port; one-shot start()/stop() or ``with``.

    ``tls``: "starttls" (STARTTLS required first; AUTH only after it), "ssl"
    (implicit TLS) or "none"; ``starttls_offered=False`` makes "starttls" plain.
    With ``user`` set, MAIL FROM needs AUTH with the current (``user``,
    ``password``); assign them at run time to rotate. ``handler`` is any aiosmtpd
    handler (bench's counting sink); the default ``RecordingHandler`` records
    mail, applies faults and enforces that AUTH. Each AUTH command counts
    in ``auth_successes``/``auth_failures`` (aiosmtplib's login() tries PLAIN
    then LOGIN: 2 failures per failed login unless one ``auth_mechanisms``).
    stop() also aborts open client connections (Controller.stop() leaks them).
    """

    def __init__(
        self,
        tls_material: TlsMaterial | None = None,
        *,
        tls: TlsMode = "starttls",
        user: str | None = "mailhub",
        password: str | None = "secret",
        starttls_offered: bool = True,
        auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        handler: Any = None,
        ready_timeout: float = 10.0,
    ) -> None:
        if tls != "none" and tls_material is None:
            raise ValueError(f"tls={tls!r} needs tls_material")
        self.host, self.tls, self.user, self.password = "127.0.0.1", tls, user, password
        self.ca_file: Path | None = tls_material.ca_file if tls_material else None
        self.auth_successes = self.auth_failures = 0
        self.handler = handler or RecordingHandler()
        if isinstance(self.handler, RecordingHandler):
            self.handler.require_auth = user is not None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()
        starttls = tls == "starttls" and starttls_offered
        ctx = tls_material.server_context() if tls_material else None
        kwargs: dict[str, Any] = (
            {"ssl_context": ctx}
            if tls == "ssl"
            else ({"tls_context": ctx, "require_starttls": True} if starttls else {})
        )
        # aiosmtpd counts only STARTTLS as TLS (so auth_require_tls=False for "ssl");
        # auth_required would warn then, so handle_MAIL enforces AUTH instead.
        super().__init__(
            self.handler,
            hostname=self.host,
            port=0,
            ready_timeout=ready_timeout,
            server_hostname="localhost",
            authenticator=self._authenticate,
            auth_require_tls=starttls,
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if m not in auth_mechanisms],
            **kwargs,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """Accept only the current (user, password); handled=False makes aiosmtpd reply 535."""
        expected = LoginPassword((self.user or "").encode(), (self.password or "").encode())
        if self.user is not None and auth_data == expected:
            self.auth_successes += 1
            return AuthResult(success=True, auth_data=auth_data)
        self.auth_failures += 1
        return AuthResult(success=False, handled=False)

    async def _create_server(self) -> asyncio.AbstractServer:
        """Bind port 0; publish the real port before Controller's self-check uses it."""
        server = await super()._create_server()
        assert isinstance(server, asyncio.Server)  # what loop.create_server makes
        self.port = server.sockets[0].getsockname()[1]
        return server

    @property
    def open_sessions(self) -> int:
        """Client connections still open."""
        return sum(1 for session in list(self._connections) if session.transport is not None)

    def drop_connections(self) -> None:
        """Abort every open client connection without a word, as a restarting server would."""
        asyncio.run_coroutine_threadsafe(self._abort_connections(), self.loop).result(10)

    def factory(self) -> SMTP:
        smtp = super().factory()
        self._connections.add(smtp)
        return smtp

    async def _abort_connections(self) -> None:
        for smtp in list(self._connections):
            if smtp.transport is not None:
                cast(asyncio.Transport, smtp.transport).abort()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:  # session tasks end once connection_lost() cancels them
            await asyncio.wait(tasks, timeout=5)

    def stop(self, no_assert: bool = True) -> None:
        """Abort open connections and stop the thread; idempotent, ok if never started."""
        if self._thread is None:
            self.loop.close()  # Controller made this loop in __init__: avoid ResourceWarning
            return
        asyncio.run_coroutine_threadsafe(self._abort_connections(), self.loop).result(10)
        super().stop(no_assert)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
