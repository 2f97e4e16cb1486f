"""Every Redis key mailhub uses, built in one place under one prefix."""

from __future__ import annotations

import hashlib

PREFIX = "mailhub:"

#: Stream of task ids ready for an attempt, read by the worker group.
QUEUE = PREFIX + "queue"
#: Consumer group of the workers on `QUEUE`.
WORKERS_GROUP = "workers"
#: Sorted set of task ids waiting for a retry, scored by due time (epoch ms).
RETRIES = PREFIX + "retries"
#: Pub/sub channel carrying every task's status transitions.
EVENTS = PREFIX + "events"
#: What the workers last found of the SMTP login (JSON, expires).
SMTP_STATUS = PREFIX + "smtp-status"
#: List of mails caught by the capture SMTP server (zero-config mode), newest first.
INBOX = PREFIX + "inbox"
#: Prefix of the task index: one sorted set per public status (`pending`,
#: `success`, `failed`) of task ids, scored by when the task entered it (epoch ms).
STATUS_INDEX = PREFIX + "index:"
#: Prefix of the per-address index: one sorted set of task ids per address a
#: task is about (each recipient, and Reply-To), named by the address's digest.
ADDRESS_INDEX = PREFIX + "address:"
#: Hash of the slow-down after a throttling reply (`store.pace`): since, until, level, cap.
PACE_THROTTLE = PREFIX + "pace:throttle"


def task(task_id: str) -> str:
    """Hash holding one task's request and its state."""
    return f"{PREFIX}task:{task_id}"


def status_index(status: str) -> str:
    """Sorted set of the task ids whose public status is `status`."""
    return STATUS_INDEX + status


def address_index(digest: str) -> str:
    """Sorted set of the task ids about one address (`index.address_digest`)."""
    return ADDRESS_INDEX + digest


def rate_limit(window: int, client: str) -> str:
    """Prefix of one client's submit counters for windows of `window` seconds.

    The enqueue script appends `:<window start>` (epoch seconds, by Redis's
    clock) to name one window's counter, which expires with its window.
    """
    return f"{PREFIX}ratelimit:{window}:{client}"


def pace_log(seconds: int) -> str:
    """Sorted set of the sends started in the last `seconds` seconds (all workers), scored by time (ms)."""
    return f"{PREFIX}pace:{seconds}"


def idempotency(scope: str, key: str) -> str:
    """String holding the task id and body fingerprint of one client's Idempotency-Key, for 24 h.

    `scope` names the client, so the same key from two clients is two keys.
    Both are hashed: the name holds neither an address nor the client's key.
    """
    # The key is printable: a line break cannot occur in it, so the pair is unambiguous.
    digest = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
    return f"{PREFIX}idempotency:{digest}"


# Notifications: webhooks and the owner's alert mails (`store.outbox`, `store.webhooks`).

#: List of events waiting to be fanned out to webhooks and alerts, each "<webhook id> <JSON body>".
OUTBOX = PREFIX + "outbox"
#: Sorted set of webhook deliveries (as `webhook` names them) waiting, scored by due time (epoch ms).
WEBHOOKS = PREFIX + "webhooks"
#: Hash of webhook totals: delivered, failed_attempts, dropped, last success and failure.
WEBHOOK_TOTALS = PREFIX + "webhook-totals"
#: Whether sending was last announced paused or running ("paused" / "running").
SENDING_ANNOUNCED = PREFIX + "sending-announced"
#: List of sending.paused / sending.resumed events waiting to become alert mails (outbox entries).
ALERTS = PREFIX + "alerts"
#: List of failed mails (JSON) waiting for the next digest to the owner.
DIGEST = PREFIX + "digest"
#: Hash about digests: failures left out of a full list (`skipped`), when the last one was queued.
DIGEST_STATE = PREFIX + "digest-state"
#: String that exists for ALERT_INTERVAL after a digest was queued: no other one until it expires.
DIGEST_HOLD = PREFIX + "digest-hold"


def webhook(delivery: str) -> str:
    """Hash of one webhook delivery (one event to one URL): its body, URL, attempts, last error."""
    return f"{PREFIX}webhook:{delivery}"


def webhook_endpoint(url: str) -> str:
    """Hash of one webhook URL's counts and last outcome, named by the URL's digest."""
    return f"{PREFIX}webhook-endpoint:{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def captcha_token(token_digest: str) -> str:
    """String marking a CAPTCHA token as used, for as long as a token can be valid."""
    return f"{PREFIX}captcha:{token_digest}"


def confirmations(address_digest: str) -> str:
    """Counter of confirmation mails sent to one address; expires a day after the first."""
    return f"{PREFIX}confirmations:{address_digest}"
