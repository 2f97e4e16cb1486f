"""Benchmarks that fill the queue without HTTP, then let one worker process drain it.

The mails go in through `TaskStore.accept` (the submit path's one Lua script)
and their outcomes come back as the result documents any client reads.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bench.support import mail
from mailhub.store.tasks import EmailRequest, TaskStore

#: Calls in flight while queueing or reading results.
IN_FLIGHT = 1000


async def queue_mails(store: TaskStore, count: int, tag: str, *, in_flight: int = IN_FLIGHT) -> list[str]:
    """Queue `count` mails (`support.mail(n, tag)`), `in_flight` calls at a time; their task ids."""
    await store.queue.ensure_group()
    task_ids: list[str] = []
    for start in range(0, count, in_flight):
        batch = range(start, min(start + in_flight, count))
        queued = await asyncio.gather(*(store.accept(request(n, tag)) for n in batch))
        task_ids += [q.task_id for q in queued]
    return task_ids


async def outcomes(store: TaskStore, task_ids: list[str]) -> list[dict[str, Any]]:
    """The result document of every task, in order (`{}` for one unknown or expired)."""
    documents: list[dict[str, Any]] = []
    for start in range(0, len(task_ids), IN_FLIGHT):
        batch = task_ids[start : start + IN_FLIGHT]
        raw = await asyncio.gather(*(store.result(task_id) for task_id in batch))
        documents += [json.loads(text) if text else {} for text in raw]
    return documents


def request(n: int, tag: str) -> EmailRequest:
    """`support.mail(n, tag)` as the store takes it."""
    body = mail(n, tag)
    return EmailRequest(body["to"], body["subject"], body["body"], body["username"])


def task_id_in(message_id: str) -> str:
    """The task id in a mailhub Message-ID: `<TASK_ID@domain>` (or `<time.pid.random.TASK_ID@domain>`)."""
    return message_id.strip("<>").partition("@")[0].rpartition(".")[2]
