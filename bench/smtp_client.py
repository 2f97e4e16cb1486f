"""The sink's own capacity: a bare aiosmtplib client, run as its own process.

    python -m bench.smtp_client --port P (--ca CA.pem | --plain) --count 2000 --connections 8 [--fresh]

Sends `count` messages shaped like mailhub's over
`connections` reused STARTTLS + AUTH connections (`--plain`: plain SMTP
without AUTH), or with `--fresh` a new connection per message,
`connections` at a time. Prints one JSON line:
{"sent": N, "seconds": S, "cpu_seconds": C}: the time and this process's CPU
from the first connection to the last reply (the messages are built before).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import ssl
import time
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate

import aiosmtplib

from bench.sink import PASSWORD, USER

#: Headers whose values repeat from mail to mail; Subject and Message-ID do not.
_REPEATING = frozenset({"from", "to", "date", "mime-version", "content-type", "content-transfer-encoding"})


class _FoldedOnceHeader(BaseHeader):
    """A header that remembers its folded form for each way of folding it."""

    def fold(self, *, policy: Policy) -> str:
        key = (policy.linesep, getattr(policy, "utf8", False), policy.max_line_length)
        folds = self.__dict__.setdefault("_folds", {})
        if key not in folds:
            folds[key] = super().fold(policy=policy)
        return folds[key]


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard header classes, and each repeating header parsed and folded once.

    The messages are the ones mailhub's builder made until it wrote the bytes
    itself (`EmailMessage` with this registry): `send_message` flattens them
    at the same cost as in every earlier run, so the baseline stays the same.
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
        if key not in self._parsed:
            self._parsed[key] = super().__call__(name, value)
        return self._parsed[key]


_POLICY = policy.default.clone(header_factory=_CachedHeaderRegistry())


def messages(count: int) -> list[EmailMessage]:
    """`count` mails as the email package builds them: UTF-8 text, Korean subject and body."""
    built = []
    for n in range(count):
        message = EmailMessage(policy=_POLICY)
        message["From"] = "noreply@example.com"
        message["To"] = f"user{n % 50}@example.com"
        message["Subject"] = f"raw {n:05d} — 안녕하세요  {n}"
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = f"<raw-{n}@example.com>"
        message.set_content(f"홍길동님 {n}", charset="utf-8")
        built.append(message)
    return built


def client(args: argparse.Namespace) -> aiosmtplib.SMTP:
    """An unconnected client for the sink: STARTTLS + AUTH, or with `--plain` neither."""
    if args.plain:
        return aiosmtplib.SMTP(hostname=args.host, port=args.port, start_tls=False, timeout=30)
    return aiosmtplib.SMTP(
        hostname=args.host,
        port=args.port,
        start_tls=True,
        tls_context=ssl.create_default_context(cafile=args.ca),
        username=USER,
        password=PASSWORD,
        timeout=30,
    )


async def send_all(args: argparse.Namespace) -> dict[str, float]:
    queue = iter(messages(args.count))

    async def reused_lane() -> None:
        async with client(args) as smtp:
            for message in queue:
                await smtp.send_message(message)

    async def fresh_lane() -> None:
        for message in queue:
            async with client(args) as smtp:  # connect, send, QUIT: aiosmtplib.send's steps
                await smtp.send_message(message)

    lane = fresh_lane if args.fresh else reused_lane
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(lane() for _ in range(args.connections)))
    return {
        "sent": args.count,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", help="the sink's CA file (STARTTLS + AUTH)")
    parser.add_argument("--plain", action="store_true", help="plain SMTP, no TLS, no AUTH")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--fresh", action="store_true")
    print(json.dumps(asyncio.run(send_all(parser.parse_args()))))


if __name__ == "__main__":
    main()
