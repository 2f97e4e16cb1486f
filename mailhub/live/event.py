"""One published result document of a task, as the live layer routes it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mailhub.store.tasks import TERMINAL_STATES

_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)
#: How a deletion notice (`{"task_id", "event": "deleted", "at"}`, published
#: when the owner deletes a task) reads in the channel: a result document's
#: `event` is never "deleted", and inside a JSON string these quotes would be escaped.
_DELETION_MARK = '"event":"deleted"'


def deleted_task(data: str) -> str | None:
    """The task id of a deletion notice; None for anything else."""
    if _DELETION_MARK not in data:
        return None
    try:
        return str(json.loads(data)["task_id"])
    except (ValueError, TypeError, KeyError):
        return None


@dataclass(frozen=True)
class Event:
    """A task's result document (the JSON text) and what routing it needs."""

    task_id: str
    seq: int
    status: str
    data: str

    @classmethod
    def parse(cls, data: str) -> Event:
        """Read a result document; ValueError if it is not one."""
        try:
            doc = json.loads(data)
            return cls(str(doc["task_id"]), int(doc["seq"]), str(doc["status"]), data)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"not a task event: {data[:200]!r}") from exc

    @property
    def terminal(self) -> bool:
        """True for the last event a task will ever have (success or failed)."""
        return self.status in _TERMINAL
