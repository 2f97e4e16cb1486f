"""The benchmarks' SMTP server: aiosmtpd with STARTTLS and AUTH, counting what arrives.

It keeps only what the checks need (how often each Message-ID and each
Subject arrived), so its own cost stays close to a bare aiosmtpd's.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import Counter
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailhub.store.embedded_valkey import free_port

USER, PASSWORD = "bench", "bench-secret"
_headers = BytesHeaderParser(policy=default)


class CountingHandler:
    """Counts accepted mail; with `refuse_first`, answers 451 to each Message-ID's first DATA."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.message_ids: Counter[str] = Counter()
        self.subjects: Counter[str] = Counter()
        #: Distinct Message-IDs seen per Subject: more than one means the mail was queued twice.
        self.ids_by_subject: dict[str, set[str]] = {}
        self.refused: set[str] = set()
        self.refuse_first = False

    @property
    def delivered(self) -> int:
        """Messages accepted so far (duplicates included)."""
        return sum(self.message_ids.values())

    def reset(self, *, refuse_first: bool = False) -> None:
        with self.lock:
            self.message_ids.clear()
            self.subjects.clear()
            self.ids_by_subject.clear()
            self.refused.clear()
            self.refuse_first = refuse_first

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        headers = _headers.parsebytes(envelope.original_content or b"")
        message_id, subject = str(headers["Message-ID"]), str(headers["Subject"])
        with self.lock:
            if self.refuse_first and message_id not in self.refused:
                self.refused.add(message_id)
                return "451 4.7.1 try again later"
            self.message_ids[message_id] += 1
            self.subjects[subject] += 1
            self.ids_by_subject.setdefault(subject, set()).add(message_id)
        return "250 2.0.0 OK"


class Sink(Controller):
    """A STARTTLS + AUTH SMTP server on 127.0.0.1 in a thread; `ca_file` is its CA."""

    def __init__(self, tls_dir: Path) -> None:
        ca = trustme.CA()
        self.ca_file = Path(tls_dir) / "bench-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
        self.handler = CountingHandler()
        self.auth_successes = 0
        super().__init__(
            self.handler,
            hostname="127.0.0.1",
            port=free_port(),
            server_hostname="localhost",
            tls_context=server_context,
            require_starttls=True,
            auth_require_tls=True,
            authenticator=self._authenticate,
        )
        logging.getLogger("mail.log").setLevel(logging.ERROR)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if auth_data == LoginPassword(USER.encode(), PASSWORD.encode()):
            self.auth_successes += 1
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
