"""The capture SMTP server of zero-config runs: mail is kept, never delivered.

Caught messages go to the inbox in Redis (`store.inbox`), shown at /dev/inbox.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from redis.asyncio import Redis

from mailhub.store import inbox

logger = logging.getLogger(__name__)


def summarise(envelope: Envelope) -> dict[str, Any]:
    content = envelope.content or b""
    raw = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
    message = email.message_from_bytes(raw, policy=email.policy.default)
    body = message.get_body(preferencelist=("plain",))
    return {
        "from": envelope.mail_from,
        "to": list(envelope.rcpt_tos),
        "subject": str(message.get("Subject", "")),
        "message_id": str(message.get("Message-ID", "")),
        "body": body.get_content() if body is not None else "",
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


class CaptureHandler:
    """aiosmtpd handler that keeps every message in the inbox."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        entry = summarise(envelope)
        await inbox.keep(self.redis, entry)
        logger.info("captured mail to %s: %s", ", ".join(entry["to"]), entry["subject"])
        return "250 Message captured"


async def start_capture_server(redis: Redis, host: str = "127.0.0.1") -> asyncio.Server:
    """Start the capture server on a free port of `host` in the running loop."""
    handler = CaptureHandler(redis)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: SMTP(handler, hostname="mailhub-capture", enable_SMTPUTF8=True),
        host=host,
        port=0,
    )
