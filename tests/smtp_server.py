"""A real SMTP server for tests: aiosmtpd in a background thread (its own event
loop) on 127.0.0.1, with trustme TLS, PLAIN/LOGIN AUTH and per-test faults."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, cast

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

TlsMode = Literal["starttls", "ssl", "none"]
FaultKind = Literal["reply_rcpt", "reply_data", "drop_after_data", "drop_before_data"]
_FAULT_ATTR = "_test_fault"  # per-transaction fault, stored on the aiosmtpd Envelope


@dataclass
class TlsMaterial:
    """A throwaway CA plus a server cert valid for ``localhost`` and ``127.0.0.1``.

    ``ca_file`` is the CA's PEM: clients trust the server via
    ``ssl.create_default_context(cafile=ca_file)`` or ``SSL_CERT_FILE=ca_file``.
    """

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
    """Create a CA and server cert; write the CA PEM to ``tmp_dir/ca.pem``."""
    ca = trustme.CA()
    ca_file = Path(tmp_dir) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsMaterial(ca, ca.issue_cert("localhost", "127.0.0.1"), ca_file)


@dataclass(frozen=True)
class Fault:
    """A canned misbehaviour for one mail transaction (see ``RecordingHandler``).

    - ``reply_rcpt(line)``: every RCPT TO of the transaction gets ``line``;
    - ``reply_data(line)``: end of DATA gets ``line``, message not recorded;
    - ``drop_after_data()``: whole message read and put in ``handler.dropped``,
      then the connection is aborted without a reply;
    - ``drop_before_data()``: connection aborted without a reply at MAIL FROM.
    Aborts surface as ``aiosmtplib.SMTPServerDisconnected`` in the client.
    """

    kind: FaultKind
    line: str | None = None

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


@dataclass
class Captured:
    """One message as received: envelope, raw bytes, and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    message: EmailMessage = field(repr=False)


class RecordingHandler:
    """aiosmtpd handler recording accepted mail and applying queued faults.

    ``faults`` is a FIFO: each mail transaction pops one fault at MAIL FROM
    (an empty list means: behave normally) and applies it at the right stage.
    Transactions that never reach MAIL FROM (e.g. failed AUTH) consume nothing.
    ``messages`` holds accepted mail, ``dropped`` mail read but never answered;
    both are appended from the server thread under ``lock``. With
    ``require_auth`` (set by SmtpServer), MAIL FROM before AUTH gets 530.
    """

    def __init__(self) -> None:
        self.messages: list[Captured] = []
        self.dropped: list[Captured] = []
        self.faults: list[Fault] = []
        self.require_auth = False
        self.lock = threading.Lock()

    async def wait_for_count(
        self, n: int, timeout: float = 10.0, *, dropped: bool = False
    ) -> list[Captured]:
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

    @staticmethod
    async def _drop(server: SMTP) -> str:
        """Abort the connection; aiosmtpd then cancels this session's task."""
        if server.transport is not None:
            server.transport.abort()  # type: ignore[attr-defined]
        await asyncio.sleep(30)  # cancelled by SMTP.connection_lost long before
        return "421 4.3.0 drop did not happen"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None and fault.kind == "drop_before_data":
            return await self._drop(server)
        setattr(envelope, _FAULT_ATTR, fault)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault: Fault | None = getattr(envelope, _FAULT_ATTR, None)
        if fault is not None and fault.kind == "reply_rcpt":
            return cast(str, fault.line)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault: Fault | None = getattr(envelope, _FAULT_ATTR, None)
        if fault is not None and fault.kind == "reply_data":
            return cast(str, fault.line)
        data = envelope.original_content or b""
        message = cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))
        captured = Captured(envelope.mail_from or "", list(envelope.rcpt_tos), data, message)
        dropping = fault is not None and fault.kind == "drop_after_data"
        with self.lock:
            (self.dropped if dropping else self.messages).append(captured)
        if dropping:
            return await self._drop(server)
        return "250 2.0.0 OK queued"


class _Controller(Controller):
    """Binds port 0 (real port known before the self-check) and, on stop, closes
    client connections still open; plain Controller.stop() leaks their sockets
    (ResourceWarning at GC) when a client is still connected."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    async def _create_server(self) -> asyncio.AbstractServer:  # type: ignore[override]
        server = await super()._create_server()
        self.port = server.sockets[0].getsockname()[1]
        return server

    def factory(self) -> SMTP:
        smtp = super().factory()
        self.connections.add(smtp)
        return smtp

    async def _abort_connections(self) -> None:
        for smtp in list(self.connections):
            if smtp.transport is not None:
                smtp.transport.abort()  # type: ignore[attr-defined]
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:  # session tasks end once connection_lost() cancels them
            await asyncio.wait(tasks, timeout=5)

    def stop(self, no_assert: bool = False) -> None:
        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._abort_connections(), self.loop).result(10)
        super().stop(no_assert)


class SmtpServer:
    """A started/stopped (sync, or as a context manager) SMTP server on 127.0.0.1.

    ``tls``: "starttls" (STARTTLS required before anything, AUTH only after it),
    "ssl" (implicit TLS from the first byte), or "none" (plain text).
    ``starttls_offered=False`` with "starttls" gives a plain server that never
    advertises STARTTLS. With ``user`` set, MAIL FROM needs a successful AUTH
    (PLAIN/LOGIN) with exactly (``user``, ``password``); both attributes may be
    changed while running. Every AUTH command counts in ``auth_successes`` or
    ``auth_failures`` (note: aiosmtplib's ``login`` tries PLAIN then LOGIN, so
    one failed login usually counts 2 failures unless ``auth_mechanisms`` is 1).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        tls_material: TlsMaterial | None = None,
        *,
        tls: TlsMode = "starttls",
        user: str | None = "mailhub",
        password: str | None = "secret",
        starttls_offered: bool = True,
        auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        handler: RecordingHandler | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        if tls != "none" and tls_material is None:
            raise ValueError(f"tls={tls!r} needs tls_material")
        self.tls: TlsMode = tls
        self.tls_material = tls_material
        self.ca_file: Path | None = tls_material.ca_file if tls_material else None
        self.user = user
        self.password = password
        self.handler = handler or RecordingHandler()
        self.handler.require_auth = user is not None
        self.auth_successes = 0
        self.auth_failures = 0
        self.port = 0
        starttls = tls == "starttls" and starttls_offered
        kwargs: dict[str, Any] = {}
        if tls_material is not None and tls == "ssl":
            kwargs["ssl_context"] = tls_material.server_context()
        if tls_material is not None and starttls:
            kwargs.update(tls_context=tls_material.server_context(), require_starttls=True)
        # auth_require_tls: aiosmtpd counts only STARTTLS as TLS, so implicit TLS must
        # opt out; auth_required is never passed (it warns without auth_require_tls),
        # the handler's handle_MAIL enforces AUTH instead.
        self._controller = _Controller(
            self.handler, hostname=self.host, port=0, ready_timeout=ready_timeout,
            server_hostname="localhost", authenticator=self._authenticate,
            auth_require_tls=starttls,
            auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if m not in auth_mechanisms],
            **kwargs,
        )
        self._running = False

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

    def start(self) -> SmtpServer:
        """Start the server thread; returns once it answers on ``self.port``."""
        self._controller.start()
        self.port = self._controller.port
        self._running = True
        return self

    def stop(self) -> None:
        """Stop the server thread (idempotent)."""
        if self._running:
            self._running = False
            self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
