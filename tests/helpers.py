"""What the test modules share: one sample mail, waiting with a deadline, settings for a test server.

Fixtures live in `conftest.py`; plain functions and constants live here, so
that test modules (and bench/) import them by name.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar, overload

from mailhub.delivery.sender import SmtpSender
from mailhub.delivery.worker import Worker
from mailhub.settings import Settings
from mailhub.store.tasks import EmailRequest, TaskStore
from tests.smtp_server import SmtpServer

T = TypeVar("T")

SUBMIT = "/api/v1/email/received"
RESULT = "/api/v1/email/result"
#: The sample mail: the HTTP contract's own example.
MAIL = EmailRequest(
    to="user@example.com", subject="Hello", body="{username}님 안녕하세요!", username="홍길동"
)
#: `MAIL` as a submit's JSON body.
MAIL_JSON = {"to": MAIL.to, "subject": MAIL.subject, "body": MAIL.body, "username": MAIL.username}
#: The body `MAIL` arrives with.
MAIL_TEXT = "홍길동님 안녕하세요!"
#: The Idempotency-Key scope of aiohttp's test client (no API key, from 127.0.0.1).
LOCAL_CLIENT = "client:127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@overload
async def eventually(
    condition: Callable[[], Awaitable[T]], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...


async def eventually(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.005,
    what: str = "",
) -> Any:
    """Check `condition()` (plain or async) every `interval` s until it is true; return its value.

    Raises TimeoutError naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or condition} not so after {timeout:g}s (last: {value!r})")
        await asyncio.sleep(interval)


async def enqueue(store: TaskStore, request: EmailRequest = MAIL) -> str:
    """Queue `request` as a submit would; its task id."""
    return (await store.accept(request)).task_id


async def result_of(store: TaskStore, task_id: str) -> dict[str, Any]:
    """The task's result document as stored now (it must exist)."""
    raw = await store.result(task_id)
    assert raw is not None, f"task {task_id} is unknown or expired"
    return json.loads(raw)


async def wait_for_document(
    store: TaskStore, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """The task's result document once `predicate` holds for it."""

    async def matching() -> dict[str, Any] | None:
        raw = await store.result(task_id)
        document = json.loads(raw) if raw else None
        return document if document and predicate(document) else None

    return await eventually(matching, timeout=timeout, what=f"task {task_id}")


async def wait_for_status(
    store: TaskStore, task_id: str, *statuses: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The task's result document once its status is one of `statuses` (default: a final one)."""
    wanted = statuses or ("success", "failed")
    return await wait_for_document(store, task_id, lambda d: d["status"] in wanted, timeout)


async def wait_for_event(store: TaskStore, task_id: str, event: str, timeout: float = 10.0) -> dict[str, Any]:
    """The task's result document once its last transition is `event` (queued, retry, ...)."""
    return await wait_for_document(store, task_id, lambda d: d["event"] == event, timeout)


def smtp_env(smtp: SmtpServer, **extra: str) -> dict[str, str]:
    """Environment for `python run.py` delivering to `smtp` (a test server or bench's sink).

    Allows any recipient at example.com and no rate limit; `extra` adds or overrides.
    """
    env = {
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "SMTP_TLS": smtp.tls,
        "SMTP_USER": smtp.user or "",
        "SMTP_PASS": smtp.password or "",
        "SSL_CERT_FILE": str(smtp.ca_file),
        "MAIL_FROM": "noreply@example.com",
        "ALLOWED_RECIPIENTS": "@example.com",
        "RATE_LIMIT": "off",
    }
    return {**env, **extra}


def settings_for(smtp: SmtpServer, **overrides: Any) -> Settings:
    """Settings that deliver to `smtp`, with quick retries (and throttling pauses) for tests."""
    values: dict[str, Any] = dict(
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        smtp_tls=smtp.tls,
        smtp_user=smtp.user or "",
        smtp_pass=smtp.password or "",
        mail_from="Site <noreply@example.com>",
        retry_base_delay=0.02,
        retry_max_delay=0.1,
        smtp_throttle_pause=0.05,
        smtp_timeout=5.0,
        allowed_recipients=("*",),
        rate_limit="off",
        worker_concurrency=8,
        shutdown_grace=5.0,
    )
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def worker_for(store: TaskStore, settings: Settings, **changes: Any) -> AsyncIterator[Worker]:
    """A worker (not started) for `settings` with `changes` (Settings fields), polling retries
    often; its SMTP connections are closed on exit."""
    settings = replace(settings, **changes)
    sender = SmtpSender(settings)
    try:
        yield Worker.from_settings(store, sender, settings, poll_interval=0.01)
    finally:
        await sender.close()


@asynccontextmanager
async def running_worker(store: TaskStore, settings: Settings, **changes: Any) -> AsyncIterator[Worker]:
    """`worker_for`, started, and stopped on exit."""
    async with worker_for(store, settings, **changes) as worker, worker.running():
        yield worker
