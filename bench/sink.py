"""The benchmarks' SMTP server: the tests' server (STARTTLS + AUTH) with a handler that only counts.

It keeps only what the checks need (how often each Message-ID and each
Subject arrived), so its own cost stays close to a bare aiosmtpd's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.smtp_server import SmtpServer, make_tls_material

USER, PASSWORD = "bench", "bench-secret"
_headers = BytesHeaderParser(policy=default)


class CountingHandler:
    """Counts accepted mail; with `refuse_first`, answers 451 to each Message-ID's first DATA.

    The 451 carries 4.3.0, a plain transient failure: a 4.7.x one would ask
    mailhub to slow down (a throttling reply) and measure the slow-down instead.
    With `data_delay`, a mail is counted (committed) when its data arrives and
    answered 250 that many seconds later, as a server that writes the mail to
    disk before it answers does (Postfix); `answering` is how many wait then.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.message_ids: Counter[str] = Counter()
        self.subjects: Counter[str] = Counter()
        #: Distinct Message-IDs seen per Subject: more than one means the mail was queued twice.
        self.ids_by_subject: dict[str, set[str]] = {}
        self.refused: set[str] = set()
        self.refuse_first = False
        self.data_delay = 0.0
        self.answering = 0

    @property
    def delivered(self) -> int:
        """Messages accepted so far (duplicates included)."""
        return sum(self.message_ids.values())

    def reset(self, *, refuse_first: bool = False, data_delay: float = 0.0) -> None:
        with self.lock:
            self.message_ids.clear()
            self.subjects.clear()
            self.ids_by_subject.clear()
            self.refused.clear()
            self.refuse_first = refuse_first
            self.data_delay = data_delay

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        headers = _headers.parsebytes(envelope.original_content or b"")
        message_id, subject = str(headers["Message-ID"]), str(headers["Subject"])
        with self.lock:
            if self.refuse_first and message_id not in self.refused:
                self.refused.add(message_id)
                return "451 4.3.0 try again later"
            self.message_ids[message_id] += 1
            self.subjects[subject] += 1
            self.ids_by_subject.setdefault(subject, set()).add(message_id)
            delay = self.data_delay
        if delay:
            await self._answer_later(delay)
        return "250 2.0.0 OK"

    async def _answer_later(self, delay: float) -> None:
        with self.lock:
            self.answering += 1
        try:
            await asyncio.sleep(delay)
        finally:  # also when the client went away meanwhile (aiosmtpd cancels the handler)
            with self.lock:
                self.answering -= 1


class Sink(SmtpServer):
    """A STARTTLS + AUTH SMTP server on 127.0.0.1 in a thread, counting; `ca_file` is its CA."""

    handler: CountingHandler

    def __init__(self, tls_dir: Path) -> None:
        material = make_tls_material(Path(tls_dir))
        super().__init__(material, tls="starttls", user=USER, password=PASSWORD, handler=CountingHandler())
        logging.getLogger("mail.log").setLevel(logging.ERROR)
