"""Prometheus metrics: counters the code bumps, gauges read when scraped.

Each process exposes its own: a web process counts submissions and open
streams, a worker counts mails and attempt durations (the all-in-one run
shows both at /metrics; a separate worker at METRICS_PORT).
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis

from mailhub.store.queue import WorkQueue
from mailhub.store.webhooks import pending_deliveries

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
THROTTLED = Counter(
    "mailhub_smtp_throttled_total",
    "Throttling replies from the SMTP server (421; 451/454 with 4.7.x or 'too many', 'rate'): "
    "reply counts each, slowdown each one that started or deepened a shared slow-down.",
    ["event"],
)
PACE_WAIT_SECONDS = Counter(
    "mailhub_pace_wait_seconds_total",
    "Seconds this worker's claim loops waited for a send permit (SMTP_RATE or a slow-down).",
)
QUEUE_DEPTH = Gauge("mailhub_queue_depth", "Tasks waiting for an attempt.", ["where"])
OLDEST_QUEUED_SECONDS = Gauge("mailhub_oldest_queued_seconds", "Age of the oldest entry on the queue stream.")
SUBSCRIBERS = Gauge("mailhub_stream_subscribers", "Open SSE and WebSocket task subscriptions.")
SMTP_PAUSED = Gauge("mailhub_smtp_paused", "1 while a login or TLS failure pauses sending in this worker.")
SMTP_CONNECTIONS = Gauge("mailhub_smtp_connections", "Pooled SMTP connections.", ["state"])
WEBHOOKS = Counter(
    "mailhub_webhooks_total",
    "Webhook POSTs by outcome: delivered, failed (an attempt: non-2xx, timeout, connection "
    "error), dropped (given up after WEBHOOK_MAX_AGE, or 410 Gone).",
    ["outcome"],
)
WEBHOOKS_PENDING = Gauge("mailhub_webhooks_pending", "Webhook deliveries waiting (all URLs, all workers).")
QUEUE_GROUP_RECREATED = Counter(
    "mailhub_queue_group_recreated_total",
    "Times this worker found the queue's worker group missing in Redis and created it again "
    "(Redis restarted empty, was flushed, or failed over without it): queued mail may have been lost.",
)


class PoolUsage(Protocol):
    """What the connection gauges read of a pool (an `SmtpPool`)."""

    @property
    def idle(self) -> int: ...

    busy: int


async def refresh_queue_gauges(redis: Redis) -> None:
    """Read the queue's depth and its oldest entry's age from Redis."""
    depth = await WorkQueue(redis).depth()
    QUEUE_DEPTH.labels("queue").set(depth.queued)
    QUEUE_DEPTH.labels("retries").set(depth.retrying)
    OLDEST_QUEUED_SECONDS.set(depth.oldest_seconds)
    WEBHOOKS_PENDING.set(await pending_deliveries(redis))


def watch_pool(pool: PoolUsage) -> None:
    """Report `pool`'s idle and busy connections at every scrape."""
    SMTP_CONNECTIONS.labels("idle").set_function(lambda: pool.idle)
    SMTP_CONNECTIONS.labels("busy").set_function(lambda: pool.busy)
