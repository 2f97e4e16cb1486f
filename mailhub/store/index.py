"""The task index: the owner's list of tasks, newest first, and one task in full.

The transition scripts file every task in one sorted set per public status
(`keys.status_index`) and one per address it is about
(`keys.address_index`), scored by when it entered its current status; a
finished task's entries are trimmed when its hash expires. Reading a page
costs one script call per set and one for the summaries of the tasks shown.

A page ends with a cursor, the (score, task id) of its last task: the next
page starts after it, so tasks filed meanwhile neither repeat nor shift it.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.asyncio import Redis

from mailhub.store import admin_scripts, keys, members, timeline
from mailhub.store.addresses import address_digest

#: The public statuses the index files tasks under.
STATUSES = ("pending", "success", "failed")
#: Entries of an address index examined at most per page when a status filters them too.
MAX_EXAMINED = 1000
#: What `admin_scripts.SUMMARIES` answers for a task, in its order.
_SUMMARY_FIELDS = (
    "to",
    "subject",
    "created_at",
    "message_id",
    "detail",
    "last_error",
    "reason",
    "resends",
    "decoy",
    "doc",
)
_CURSOR = re.compile(r"^(\d{1,15}):([0-9a-f-]{36})$")


@dataclass(frozen=True, order=True)
class Cursor:
    """Where a page ended: its last task's score (epoch ms) and id."""

    score: int
    task_id: str

    def encode(self) -> str:
        return f"{self.score}:{self.task_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor `encode` wrote; ValueError for anything else."""
        match = _CURSOR.match(text)
        if match is None:
            raise ValueError("not a cursor of this index")
        return cls(int(match[1]), match[2])


class _Filed(NamedTuple):
    """One entry of an index: its score and its member (`members`)."""

    score: int
    member: str

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.score, members.task_id(self.member))


@dataclass(frozen=True)
class Page:
    """Tasks (result document + the owner's fields), newest first, and where to go on."""

    tasks: list[dict[str, Any]]
    next_cursor: Cursor | None


class TaskIndex:
    """Reads the task index; takes a Redis client."""

    def __init__(self, redis: Redis, *, message_id_domain: str) -> None:
        """`message_id_domain`: the Message-IDs' (`TaskStore.message_id_domain`), for mail not sent yet."""
        self.redis = redis
        self.message_id_domain = message_id_domain
        self._page = redis.register_script(admin_scripts.source(admin_scripts.PAGE))
        self._summaries = redis.register_script(admin_scripts.source(admin_scripts.SUMMARIES))

    async def page(
        self,
        *,
        limit: int,
        status: str | None = None,
        address: str | None = None,
        cursor: Cursor | None = None,
    ) -> Page:
        """Up to `limit` tasks after `cursor`, of one status and/or about one address."""
        if address is not None:
            return await self._address_page(address, status, limit, cursor)
        statuses = [status] if status else list(STATUSES)
        runs = [await self._entries(keys.status_index(s), limit + 1, cursor) for s in statuses]
        # Merged in the indexes' own order: by score, ties by member.
        merged = list(heapq.merge(*runs, key=lambda entry: (entry.score, entry.member), reverse=True))
        more = len(merged) > limit
        entries = [entry.cursor for entry in merged[:limit]]
        tasks = await self._read([entry.task_id for entry in entries])
        return Page([task for task in tasks if task is not None], entries[-1] if more else None)

    async def _address_page(
        self, address: str, status: str | None, limit: int, cursor: Cursor | None
    ) -> Page:
        index = keys.address_index(address_digest(address))
        chunk = max(limit, 50)
        found: list[dict[str, Any]] = []
        examined = 0
        while True:
            entries = [entry.cursor for entry in await self._entries(index, chunk, cursor)]
            for entry, task in zip(entries, await self._read([e.task_id for e in entries])):
                examined += 1
                cursor = entry
                if task is not None and status in (None, task["status"]):
                    found.append(task)
                if len(found) == limit or examined >= MAX_EXAMINED:
                    more = bool(await self._entries(index, 1, cursor))
                    return Page(found, cursor if more else None)
            if len(entries) < chunk:
                return Page(found, None)

    async def _entries(self, index: str, count: int, cursor: Cursor | None) -> list[_Filed]:
        top, after = ("+inf", "") if cursor is None else (str(cursor.score), cursor.task_id)
        flat = await self._page(keys=[index], args=[top, after, count])
        return [_Filed(int(float(flat[i + 1])), _text(flat[i])) for i in range(0, len(flat), 2)]

    async def _read(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        """Each task's `summary`, in order; None for one that is gone meanwhile."""
        if not task_ids:
            return []
        rows = await self._summaries(
            keys=[keys.task(task_id) for task_id in task_ids], args=[self.message_id_domain]
        )
        found = [dict(zip(_SUMMARY_FIELDS, row)) if row else None for row in rows]
        # A decoy (a filled honeypot) is filed under its address, for erasure, but never listed.
        return [summary(fields) if fields and not fields["decoy"] else None for fields in found]

    async def task(self, task_id: str) -> dict[str, Any] | None:
        """One task in full: its summary, its request and its timeline; None if gone."""
        key = keys.task(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            await self._summaries(keys=[key], args=[self.message_id_domain], client=pipe)
            pipe.hgetall(key)
            [row], everything = await pipe.execute()
        stored = {_text(k): _text(v) for k, v in everything.items()}
        if not row or not stored:
            return None
        task = summary(dict(zip(_SUMMARY_FIELDS, row)))
        for name in ("body", "username", "reply_to", "from_name"):
            if stored.get(name):
                task[name] = stored[name]
        task["html"] = bool(stored.get("html"))
        if stored.get("decoy"):
            task["decoy"] = True
        task["timeline"] = timeline.entries(stored.get("timeline", ""))
        delivered = [line["at"] for line in task["timeline"] if line["event"] == "success"]
        if stored.get("delivered_at") or delivered:  # a task written before has the field
            task["delivered_at"] = stored.get("delivered_at") or delivered[-1]
        return task


def summary(stored: dict[str, Any]) -> dict[str, Any]:
    """A task as the owner's list shows it: the result document, and what only the owner sees.

    `detail` is the full text of the last error (the document's `reason` or
    `last_error` may be a short public phrase).
    """
    fields = {name: _text(value) for name, value in stored.items() if value is not None}
    task: dict[str, Any] = json.loads(fields["doc"])
    task["to"] = fields.get("to", task["to"])  # the document may show a form's recipients masked
    task["subject"] = fields.get("subject", "")
    task["created_at"] = fields.get("created_at")
    task["message_id"] = fields.get("message_id", "")  # none for a decoy: never sent
    task["resends"] = int(fields.get("resends", 0))
    detail = fields.get("detail") or fields.get("last_error") or fields.get("reason")
    if detail:
        task["detail"] = detail
    return task


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
