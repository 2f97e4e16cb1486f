"""The sink's own capacity: a bare aiosmtplib client, run as its own process.

    python -m bench.smtp_client --port P (--ca CA.pem | --plain) --count 2000 --connections 8 [--fresh]

Sends `count` messages shaped like mailhub's (same builder) over
`connections` reused STARTTLS + AUTH connections (`--plain`: plain SMTP
without AUTH), or with `--fresh` a new connection per message,
`connections` at a time. Prints one JSON line:
{"sent": N, "seconds": S, "cpu_seconds": C}: the time and this process's CPU
from the first connection to the last reply (the messages are built before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from email.message import EmailMessage

import aiosmtplib

from bench.sink import PASSWORD, USER
from mailhub.delivery.message import MessageParts, build_message, render_body


def messages(count: int) -> list[EmailMessage]:
    return [
        build_message(
            MessageParts(
                mail_from="noreply@example.com",
                to=f"user{n % 50}@example.com",
                subject=f"raw {n:05d} — 안녕하세요  {n}",
                message_id=f"<raw-{n}@example.com>",
                text=render_body("{username}님 " + str(n), "홍길동"),
            )
        )
        for n in range(count)
    ]


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
