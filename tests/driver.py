"""A task driven by hand, for the live-status tests.

`TaskDriver` moves a task one Lua script at a time where the real worker
would make the timing of a transition a race: each call returns once the
transition is published.
"""

from __future__ import annotations

from mailhub import reasons
from mailhub.store.tasks import Attempt, EmailRequest, TaskStore
from tests.helpers import MAIL, enqueue


class TaskDriver:
    """One task, moved by the test: queued, attempt, retry, attempt, success or failed."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.task_id = ""
        self.attempt: Attempt | None = None

    async def enqueue(self, request: EmailRequest = MAIL) -> str:
        """Event 1 (queued)."""
        await self.store.queue.ensure_group()
        self.task_id = await enqueue(self.store, request)
        return self.task_id

    async def begin_attempt(self) -> Attempt:
        """The next attempt starts (event attempt)."""
        await self.store.queue.promote_due_retries()
        [entry] = await self.store.queue.read_new("driver", 1, block=1.0)
        assert entry.task_id == self.task_id
        attempt = await self.store.begin_attempt(entry)
        assert attempt is not None
        self.attempt = attempt
        return attempt

    async def retry(self, detail: str = "451 4.7.1 try again later") -> None:
        """The attempt failed; the next one is due at once (event retry)."""
        assert self.attempt is not None
        await self.store.retry_later(self.attempt, 0.0, reasons.TEMPORARY, detail)

    async def succeed(self) -> None:
        """Event success."""
        assert self.attempt is not None
        await self.store.succeed(self.attempt)

    async def fail(self, detail: str = "failed after 1 attempt: 550 5.1.1 no such user") -> None:
        """Event failed."""
        assert self.attempt is not None
        await self.store.fail(self.attempt, reasons.REFUSED, detail)

    async def run_to_success_after_one_retry(self) -> None:
        """Events 2 to 5 of the usual retried delivery."""
        await self.begin_attempt()
        await self.retry()
        await self.begin_attempt()
        await self.succeed()
