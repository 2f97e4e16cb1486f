"""Every task's events for one owner's dashboard: the hub's "all tasks" feed.

The admin event stream follows every transition of every task, and every
deletion, through the process's one pub/sub connection (`EventHub.watch_all`).
A feed holds a bounded queue of the channel's messages, as published (JSON
text); one that falls too far behind is told to resync (reload what it shows)
instead of holding a backlog in the server's memory.
"""

from __future__ import annotations

from collections.abc import Callable

from mailhub.live.mailbox import Mailbox, Signal


class AllTasks:
    """The events channel's messages for one client, in publish order.

    Made by `EventHub.watch_all`; use it as a context manager, or call `close()`.
    """

    def __init__(self, *, on_close: Callable[[AllTasks], None], queue_size: int) -> None:
        self._on_close = on_close
        self._queue: Mailbox[str] = Mailbox(queue_size)
        self.closed = False

    def deliver(self, message: str) -> None:
        """Take one message of the channel (the hub calls this in publish order)."""
        self._queue.put(message)

    def resync(self) -> None:
        """Messages may have been lost (a pub/sub reconnect)."""
        self._queue.put(Signal.RESYNC)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_close(self)
        self._queue.put(Signal.CLOSED)

    async def get(self, timeout: float | None = None) -> str | Signal | None:
        """The next message or signal; None if `timeout` seconds pass without one."""
        return await self._queue.get(timeout)

    def __enter__(self) -> AllTasks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
