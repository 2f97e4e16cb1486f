"""One client's feed of one task's events, and the one loop that gives them.

A `Subscription` turns what the hub hands it into the exact sequence a client
must see: the task's current state, then every newer transition, each once,
in order, until a terminal one. How each event reaches the client is the
writer's mode, given to `run`:

- `Direct` (SSE): while nothing is queued, the hub calls the writer itself as
  it dispatches an event, so an event costs one loop over its task's
  writers, not one task wake-up per client. The writer never waits; when it
  says the client can take no more, the loop re-reads the stored state.
- `Queued` (WebSocket): events wait in the subscription's small queue and the
  loop sends them one by one, waiting while the socket is full.

In both modes a subscription that falls too far behind, or that the hub warns
of a gap (a pub/sub reconnect), re-reads the stored state instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from mailhub.live.event import Event
from mailhub.live.mailbox import Mailbox, Signal


@dataclass(frozen=True, slots=True)
class Direct:
    """The hub writes each event itself; `write` never waits, and is False if the client can take no more."""

    write: Callable[[Event], bool]


@dataclass(frozen=True, slots=True)
class Queued:
    """The subscription's loop sends each event from its queue, waiting while the client's socket is full."""

    send: Callable[[Event], Awaitable[object]]


Writer: TypeAlias = Direct | Queued


class Subscription:
    """The events of one task for one client, in publish order.

    Made by `EventHub.subscribe`; use it as a context manager, or call
    `close()`: the hub forgets it at once, whether or not `run` ever started.
    """

    def __init__(
        self,
        task_id: str,
        *,
        read_state: Callable[[str], Awaitable[Event | None]],
        on_close: Callable[[Subscription], None],
        queue_size: int,
    ) -> None:
        self.task_id = task_id
        self._read_state = read_state
        self._on_close = on_close
        self._queue: Mailbox[Event] = Mailbox(queue_size)
        self._writer: Writer | None = None
        self._live = False
        #: The seq of the last event given to the client.
        self.last = 0
        self.closed = False

    @property
    def live(self) -> bool:
        """True while the hub writes this subscription's events straight to its client."""
        return self._live

    def deliver(self, event: Event) -> None:
        """Take one published event of the task (the hub calls this in publish order)."""
        if self._live:
            self._write_now(event)
        else:
            self._queue.put(event)

    def resync(self) -> None:
        """Events may have been lost: the loop re-reads the stored state."""
        self._queue.put(Signal.RESYNC)

    def close(self) -> None:
        """Stop receiving; `run` ends at its next step, or at once if it has not started."""
        if self.closed:
            return
        self.closed = True
        self._live = False
        self._on_close(self)
        self._queue.put(Signal.CLOSED)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def run(
        self,
        first: Event,
        writer: Writer,
        *,
        after: int = 0,
        alive: Callable[[], bool] | None = None,
        idle: float = 1.0,
    ) -> bool:
        """Give `writer` `first`, then every newer event of the task, each once, in order.

        `first` is the stored state read *after* subscribing
        (`EventHub.current`), so nothing published in between is lost; an
        event whose seq is not above the last one given (or `after`, a
        client's Last-Event-ID) is dropped. The feed ends, and the
        subscription closes, after a terminal event, when the subscription
        is closed, when the task's state expires, or when `alive()` (asked
        every `idle` quiet seconds, and before a re-read) turns False: then
        True. False if a `Direct` writer could not take the stored state even
        after a resync: the client cannot keep up.
        """
        self._writer = writer
        self.last = after
        event: Event | None = None if self.closed else first
        try:
            while event is not None:
                if not await self._give(event, writer):
                    return False
                if event.terminal:
                    break
                event = await self._next(alive, idle)
            return True
        finally:
            self._live = False
            self.close()

    async def _next(self, alive: Callable[[], bool] | None, idle: float) -> Event | None:
        """The next event to give the client; None when the feed is over."""
        while True:
            # Nothing queued: a Direct writer goes live, and the hub writes from now on.
            self._live = isinstance(self._writer, Direct) and not self._queue and not self.closed
            item = await self._queue.get(idle if alive else None)
            if isinstance(item, Event):
                return item
            if item is Signal.CLOSED or (alive is not None and not alive()):
                return None  # a client that is gone gets no read of the stored state
            if item is Signal.RESYNC:
                self._live = False  # what comes while the state is read queues up
                return await self._read_state(self.task_id)

    async def _give(self, event: Event, writer: Writer) -> bool:
        if event.seq <= self.last:
            return True
        if isinstance(writer, Direct):
            if not writer.write(event):
                return False
        else:
            await writer.send(event)
        self.last = event.seq
        return True

    def _write_now(self, event: Event) -> None:
        # Called by the hub's dispatch: the loop is not woken unless the stream
        # ends (terminal) or the client can take no more.
        if event.seq <= self.last:
            return
        assert isinstance(self._writer, Direct)
        if not self._writer.write(event):
            self._live = False
            self._queue.put(Signal.RESYNC)  # re-read, and written again, once the client catches up
            return
        self.last = event.seq
        if event.terminal:
            self._live = False
            self._queue.put(event)  # already written: wakes the loop to end the feed
