"""Tasks: their states, and every read and write of them in Redis.

A task is one hash (`keys.task`) plus, while it waits for an attempt, one
entry in the queue stream or one member of the retries set. See the README's
architecture section for the state machine.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from mailhub import reasons
from mailhub.clock import iso, now_iso
from mailhub.errors import IdempotencyConflict
from mailhub.settings import Settings
from mailhub.store import keys, scripts
from mailhub.store.addresses import people
from mailhub.store.batching import ScriptBatcher
from mailhub.store.outbox import Outbox
from mailhub.store.queue import QueueEntry, WorkQueue
from mailhub.store.replication import Replication

if TYPE_CHECKING:
    from mailhub.store.rate_limit import Quota

logger = logging.getLogger(__name__)


class TaskState(str, enum.Enum):
    QUEUED = "queued"  #: accepted, waiting for its first attempt
    SENDING = "sending"  #: an attempt is in progress
    RETRYING = "retrying"  #: an attempt failed; the next one is scheduled
    SUCCESS = "success"  #: the SMTP server accepted the message
    FAILED = "failed"  #: permanently refused, or out of attempts


TERMINAL_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILED})
#: An Idempotency-Key is remembered this long (seconds).
IDEMPOTENCY_TTL = 24 * 3600
#: What the enqueue script answers (see `scripts.ENQUEUE`).
_QUEUED, _REPEAT, _CONFLICT, _OVER_LIMIT = 1, 0, -1, -2


@dataclass(frozen=True)
class EmailRequest:
    """What a client asked to send."""

    #: One address, or several separated by commas (a form's recipients).
    to: str
    subject: str
    body: str
    username: str = ""
    #: The address replies go to ("" for none).
    reply_to: str = ""
    #: An HTML alternative of the body ("" for plain text only).
    html: str = ""
    #: The From display name; the address stays MAIL_FROM ("" keeps MAIL_FROM as is).
    from_name: str = ""
    #: The body is final text (a form's): `{username}` is not replaced at send time.
    rendered: bool = False
    #: An alert to the owner (`notify.alerts`): its own outcome is announced nowhere.
    alert: bool = False
    #: What the result document shows as `to` ("": `to` itself). A form's
    #: recipients are the owner's: the visitor who polls sees them masked.
    shown_to: str = ""


@dataclass(frozen=True)
class Attempt:
    """One claimed delivery attempt: the mail, and where it came from."""

    entry_id: str
    task_id: str
    to: str
    subject: str
    body: str
    username: str
    message_id: str
    number: int
    reply_to: str = ""
    html: str = ""
    from_name: str = ""
    rendered: bool = False


@dataclass(frozen=True)
class IdempotencyKey:
    """An Idempotency-Key as the client that sent it owns it: two clients never share one."""

    #: Who sent it: an API key's id, or the client's address group (`SubmitGuard.idempotency_scope`).
    scope: str
    #: The header's value.
    value: str


@dataclass(frozen=True)
class Queued:
    """The answer to a submit: the task, and whether this call created it."""

    task_id: str
    created: bool


class TaskStore:
    """Reads and atomic transitions of tasks; takes a Redis client."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention: int,
        max_attempts: int,
        message_id_domain: str,
        max_queue_age: int = Settings.max_queue_age,
        notify: bool = False,
        replication: Replication | None = None,
    ) -> None:
        """`replication`: the replicas a submit must reach before it is answered (None: no WAIT)."""
        self.redis = redis
        self.retention = retention
        self.max_attempts = max_attempts
        self.max_queue_age = max_queue_age
        self.message_id_domain = message_id_domain
        #: The stream and retries set the tasks wait in.
        #: Pipelines this store's calls share (with the queue's and the send pace's).
        self.batcher = ScriptBatcher(redis, replication=replication)
        self.queue = WorkQueue(redis, self.batcher)
        #: With `notify`, the end of each task is queued for webhooks and alerts.
        self.outbox = Outbox(redis) if notify else None
        self._enqueue = redis.register_script(scripts.source(scripts.ENQUEUE, outbox=notify))
        self._begin = redis.register_script(scripts.source(scripts.BEGIN_ATTEMPT, outbox=notify))
        self._succeed = redis.register_script(scripts.source(scripts.SUCCEED, outbox=notify))
        self._fail = redis.register_script(scripts.source(scripts.FAIL, outbox=notify))
        self._retry = redis.register_script(scripts.source(scripts.RETRY_LATER, outbox=notify))
        self._result = redis.register_script(scripts.reader_source(scripts.RESULT))

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> TaskStore:
        domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "mailhub.local"
        return cls(
            redis,
            retention=settings.result_retention,
            max_attempts=settings.max_attempts,
            message_id_domain=domain,
            max_queue_age=settings.max_queue_age,
            notify=bool(settings.webhook_urls or settings.alert_email),
            replication=replication_for(settings),
        )

    async def accept(
        self,
        request: EmailRequest,
        idempotency: IdempotencyKey | None = None,
        quota: Quota | None = None,
        *,
        decoy: bool = False,
    ) -> Queued:
        """Store a new task and queue it in one step: one round trip to Redis.

        With a `quota`, the submit is first counted against the client's rate
        limits; over one, nothing is stored and its `RateLimited` is raised.
        When the primary has replicas, answers only once they hold the task
        (`replication`), else raises `NotReplicated`: the task is stored, and
        a repeat with the same Idempotency-Key returns it.
        With an `idempotency` key this client used in the last 24 h, returns
        the earlier task instead (`created` False), or raises
        `IdempotencyConflict` if the body differs. A `decoy` (a filled
        honeypot) goes through every step and reads like a real task, but
        keeps only its recipient, is never queued, and stays pending until it
        expires after the result retention.
        """
        task_id = str(uuid.uuid4())
        now = now_iso()
        kept = EmailRequest(request.to, "", "", shown_to=request.shown_to) if decoy else request
        values = _task_values(task_id, kept)
        # Without an Idempotency-Key the script neither reads nor keeps a fingerprint.
        once_key, fingerprint = keys.task(task_id), ""
        if idempotency is not None:
            once_key, fingerprint = (
                keys.idempotency(idempotency.scope, idempotency.value),
                _fingerprint(request),
            )
        limit_keys, limit_args = (quota.counter_keys(), quota.script_args()) if quota else ([], [])
        decoy_retention = self.retention if decoy else 0
        answer = await self.batcher.run(
            self._enqueue,
            [keys.task(task_id), keys.QUEUE, once_key, *limit_keys],
            [now, fingerprint, IDEMPOTENCY_TTL, decoy_retention, *limit_args, *values],
            replicated=True,
        )
        outcome = int(answer[1])
        if outcome == _OVER_LIMIT and quota is not None:
            raise quota.refusal(int(answer[0]), int(answer[2]))
        if outcome == _CONFLICT:
            raise IdempotencyConflict("This Idempotency-Key was already used with another body.")
        return Queued(_text(answer[0]), created=outcome == _QUEUED)

    async def repeat_of(self, idempotency: IdempotencyKey, request: EmailRequest) -> str | None:
        """The task an earlier submit with this key and the same request made, if any.

        Lets a door with a one-time check (a form's CAPTCHA) answer a resent
        request without spending a new token; `accept` stays the atomic check.
        """
        seen = await self.redis.get(keys.idempotency(idempotency.scope, idempotency.value))
        if seen is None:
            return None
        task_id, _, fingerprint = _text(seen).partition(" ")
        return task_id if fingerprint == _fingerprint(request) else None

    async def result(self, task_id: str) -> str | None:
        """The task's result document as JSON text, or None if unknown or expired."""
        doc = await self.batcher.run(self._result, [keys.task(task_id)], [])
        return doc.decode() if isinstance(doc, bytes) else doc

    async def begin_attempt(self, entry: QueueEntry) -> Attempt | None:
        """Count a new attempt for the entry's task, or None if there is nothing to send.

        A task whose last allowed attempt was interrupted, or that waited past
        `max_queue_age`, is failed here instead (and logged with its detail);
        an entry whose task is gone from Redis is dropped (and logged).
        """
        row = await self.batcher.run(
            self._begin,
            [keys.task(entry.task_id), keys.QUEUE],
            [
                entry.entry_id,
                now_iso(),
                self.max_attempts,
                self.retention,
                int(time.time()),
                self.max_queue_age,
                reasons.INTERRUPTED,
                reasons.too_old(self.max_queue_age),
                self.message_id_domain,
            ],
        )
        if isinstance(row, str | bytes):
            logger.warning("task %s: %s", entry.task_id, _text(row))
            return None
        if row == 0:
            # Redis lost the hash (a restart, an eviction) or it was deleted: nothing to send.
            logger.warning("task %s: its queue entry has no task in Redis; entry dropped", entry.task_id)
            return None
        if not row:
            return None
        task_id, to, subject, body, username, message_id, number, *extra = (_text(v) for v in row)
        reply_to, html, from_name, rendered = extra
        return Attempt(
            entry.entry_id,
            task_id,
            to,
            subject,
            body,
            username,
            message_id,
            int(number),
            reply_to=reply_to,
            html=html,
            from_name=from_name,
            rendered=rendered == "1",
        )

    async def succeed(self, attempt: Attempt) -> None:
        await self.batcher.run(
            self._succeed,
            [keys.task(attempt.task_id), keys.QUEUE],
            [attempt.entry_id, attempt.number, now_iso(), self.retention],
        )

    async def fail(self, attempt: Attempt, reason: str, detail: str) -> None:
        """Fail the task for good: `reason` for the result document, `detail` kept in the hash only."""
        await self.batcher.run(
            self._fail,
            [keys.task(attempt.task_id), keys.QUEUE],
            [attempt.entry_id, attempt.number, now_iso(), self.retention, reason, detail],
        )

    async def retry_later(
        self, attempt: Attempt, delay: float, error: str, detail: str, *, counted: bool = True
    ) -> None:
        """Schedule the next attempt in `delay` s; `counted=False` gives the attempt back.

        `error` becomes the result document's `last_error`; `detail` is kept in the hash only.
        """
        due = time.time() + delay
        await self.batcher.run(
            self._retry,
            [keys.task(attempt.task_id), keys.QUEUE, keys.RETRIES],
            [
                attempt.entry_id,
                attempt.number,
                now_iso(),
                int(due * 1000),
                iso(datetime.fromtimestamp(due, UTC)),
                error,
                int(counted),
                detail,
            ],
        )


def replication_for(settings: Settings) -> Replication | None:
    """What submits wait for, as REDIS_MIN_REPLICAS and REDIS_WAIT_TIMEOUT say (None: never wait)."""
    if settings.redis_min_replicas == 0:
        return None
    return Replication(settings.redis_min_replicas, settings.redis_wait_timeout)


def _task_values(task_id: str, request: EmailRequest) -> list[str | int]:
    """What the enqueue script stores of a task, in its order (see `scripts.ENQUEUE`)."""
    return [
        task_id,
        request.to,
        request.subject,
        request.body,
        request.username,
        request.reply_to,
        request.html,
        request.from_name,
        int(request.rendered),
        int(request.alert),
        request.shown_to,
        " ".join(people(request.to, request.reply_to)),
    ]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fingerprint(request: EmailRequest) -> str:
    fields = [request.to, request.subject, request.body, request.username]
    if request.rendered:  # a form's mail; the contract's fingerprints stay as they were
        fields += [request.reply_to, request.html, request.from_name]
    return _digest(json.dumps(fields, ensure_ascii=False))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
