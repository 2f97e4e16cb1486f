"""Prometheus metrics: counters the code bumps, gauges read when scraped.

Each process exposes its own: a web process counts submissions and open
streams, a worker counts mails and attempt durations (the all-in-one run
shows both at /metrics; a separate worker at METRICS_PORT).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis

from mailhub.store import keys

SUBMISSIONS = Counter(
    "mailhub_submissions_total",
    "Submit requests by outcome: accepted, duplicate (idempotent repeat), honeypot, or the "
    "error code of a refusal.",
    ["outcome"],
)
MAILS = Counter(
    "mailhub_mails_total",
    "Delivery attempts by outcome: sent, failed (for good), retried, deferred (sending paused).",
    ["outcome"],
)
FAILURES = Counter(
    "mailhub_delivery_failures_total",
    "Failed delivery attempts by class: transient (retried), permanent (a 5xx reply), "
    "configuration (login or TLS; sending pauses). The replies themselves are in the log.",
    ["class"],
)
ATTEMPT_SECONDS = Histogram(
    "mailhub_attempt_duration_seconds",
    "Time of one SMTP delivery attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("mailhub_queue_depth", "Tasks waiting for an attempt.", ["where"])
OLDEST_QUEUED_SECONDS = Gauge("mailhub_oldest_queued_seconds", "Age of the oldest entry on the queue stream.")
SUBSCRIBERS = Gauge("mailhub_stream_subscribers", "Open SSE and WebSocket task subscriptions.")
SMTP_PAUSED = Gauge("mailhub_smtp_paused", "1 while a login or TLS failure pauses sending in this worker.")
SMTP_CONNECTIONS = Gauge("mailhub_smtp_connections", "Pooled SMTP connections.", ["state"])


async def refresh_queue_gauges(redis: Redis) -> None:
    """Read the queue's depth and its oldest entry's age from Redis."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(keys.QUEUE)
        pipe.zcard(keys.RETRIES)
        pipe.xrange(keys.QUEUE, count=1)
        queued, retrying, first = await pipe.execute()
    QUEUE_DEPTH.labels("queue").set(queued)
    QUEUE_DEPTH.labels("retries").set(retrying)
    # A stream entry id starts with its creation time in milliseconds.
    oldest_ms = int(first[0][0].split("-")[0]) if first else None
    OLDEST_QUEUED_SECONDS.set(max(0.0, time.time() - oldest_ms / 1000) if oldest_ms else 0)


def watch_pool(pool: object) -> None:
    """Report `pool`'s connections (an `SmtpPool`) at every scrape."""
    SMTP_CONNECTIONS.labels("idle").set_function(lambda: pool.idle)  # type: ignore[attr-defined]
    SMTP_CONNECTIONS.labels("busy").set_function(lambda: pool.busy)  # type: ignore[attr-defined]
