"""Live task events: one Redis pub/sub connection per process, fanned out.

The Lua scripts of `scripts` publish every transition on `keys.EVENTS`.
An `EventHub` holds the process's only subscription to that channel and
hands each event to the in-process `Subscription`s of its task (one per SSE
stream, one per task a WebSocket follows). `follow` turns a subscription
into the exact sequence a client must see: the current state, then every
newer transition, each once, in order, until a terminal one. `relay` gives
the same sequence to a synchronous writer, which the hub then calls itself
while it dispatches: at 10,000 SSE streams an event costs one loop over its
task's writers, not one task wake-up per client.

Nothing here imports aiohttp: the web layer passes the task store (and so
its Redis client) in.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TypeAlias

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from mailhub.store import keys
from mailhub.store.tasks import TERMINAL_STATES, TaskStore

logger = logging.getLogger(__name__)

_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)


@dataclass(frozen=True)
class Event:
    """One published result document of a task (the JSON text, and what routing needs)."""

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


#: Hands one event to a client at once, without waiting; False if the client can take no more.
Writer: TypeAlias = Callable[[Event], bool]


class Signal(enum.Enum):
    """What a subscription may receive besides events."""

    RESYNC = "resync"  #: events may have been lost (reconnect, overflow): re-read the stored state
    CLOSED = "closed"  #: the subscription is over; nothing more will come


class Subscription:
    """The events of one task for one client, in publish order.

    Use it as a context manager, or call `close()`: the hub forgets it at once.
    """

    def __init__(self, hub: EventHub, task_id: str, maxsize: int) -> None:
        self.task_id = task_id
        self.hub = hub
        # A plain list and one future while `get` waits: an asyncio.Queue costs
        # ~3 KiB, a sixth of what a stream costs the server at 10,000 of them.
        self._queue: list[Event | Signal] = []
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        #: While `relay` has it set, the hub hands events to it instead of the queue.
        self._writer: Writer | None = None
        #: The seq of the last event given to the client (kept by `relay`).
        self.last = 0

    async def get(self, timeout: float | None = None) -> Event | Signal | None:
        """The next event or signal; None if `timeout` seconds pass without one."""
        if not self._queue:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        return self._queue.pop(0)

    def close(self) -> None:
        """Stop receiving; a pending or later `get()` returns `Signal.CLOSED`."""
        if self.closed:
            return
        self.closed = True
        self.hub._forget(self)
        self._put(Signal.CLOSED)

    def _put(self, item: Event | Signal) -> None:
        if self._writer is not None and isinstance(item, Event):
            self._write(item)
            return
        if len(self._queue) >= self._maxsize:
            # A client this far behind skips to the stored state instead of
            # holding an unbounded backlog in the server's memory.
            self._queue.clear()
            item = Signal.CLOSED if item is Signal.CLOSED else Signal.RESYNC
        self._queue.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _write(self, event: Event) -> None:
        # Called by the hub's dispatch, in publish order: the relay is not woken
        # unless the client's stream ends (terminal) or it can take no more.
        if event.seq <= self.last:
            return
        assert self._writer is not None
        if not self._writer(event):
            self._writer = None
            self._put(Signal.RESYNC)  # the relay re-reads the state once the client catches up
            return
        self.last = event.seq
        if event.terminal:
            self._writer = None
            self._put(event)  # already written: wakes the relay to end the stream

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class EventHub:
    """The process's one subscription to the events channel, shared by all clients.

    The hub listens only while someone follows a task, and for `linger`
    seconds after the last one left: a web process nobody watches does not
    read every transition of every mail.
    """

    def __init__(
        self,
        store: TaskStore,
        *,
        channel: str = keys.EVENTS,
        queue_size: int = 64,
        read_limit: int = 1,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        linger: float = 60.0,
        ready_timeout: float = 2.0,
    ) -> None:
        self.store = store
        self.redis: Redis = store.redis
        self.channel = channel
        self.queue_size = queue_size
        # A burst of clients connecting (or all of them resyncing) reads the
        # stored states one at a time: each read is one quick HGET, and the
        # process then holds few Redis connections however many clients follow.
        self._reads = asyncio.Semaphore(read_limit)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._topics: dict[str, set[Subscription]] = {}
        self.linger = linger
        self.ready_timeout = ready_timeout
        self._listener: asyncio.Task[None] | None = None
        self._idle_stop: asyncio.TimerHandle | None = None
        self._stopped = False
        self._ready = asyncio.Event()
        #: How many times the channel was (re)subscribed; each one after the first is a reconnect.
        self.connections = 0

    @property
    def subscription_count(self) -> int:
        """Open subscriptions, over all tasks."""
        return sum(len(subs) for subs in self._topics.values())

    @property
    def task_count(self) -> int:
        """Tasks with at least one open subscription."""
        return len(self._topics)

    def subscribe(self, task_id: str) -> Subscription:
        """Start receiving the events of `task_id` (subscribe, then read the stored state)."""
        subscription = Subscription(self, task_id, self.queue_size)
        self._topics.setdefault(task_id, set()).add(subscription)
        self._listen_while_needed()
        return subscription

    async def current(self, task_id: str) -> Event | None:
        """The task's stored state, or None if it is unknown or expired.

        While the hub is (re)subscribing, waits for it first: a state read
        before that could miss an event published in between. A
        `RedisConnectionError` if the channel is not subscribed within
        `ready_timeout` seconds.
        """
        if (
            self._listener is not None
            and not self._ready.is_set()
            and not await self.wait_ready(self.ready_timeout)
        ):
            raise RedisConnectionError("live events are unavailable: Redis does not answer")
        async with self._reads:
            stored = await self.store.result(task_id)
        return None if stored is None else Event.parse(stored)

    def _forget(self, subscription: Subscription) -> None:
        subs = self._topics.get(subscription.task_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._topics[subscription.task_id]
        if not self._topics and self._listener is not None and self._idle_stop is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the hub is going anyway
                self._idle_stop = asyncio.get_running_loop().call_later(self.linger, self._stop_listening)

    def _listen_while_needed(self) -> None:
        if self._idle_stop is not None:
            self._idle_stop.cancel()
            self._idle_stop = None
        if self._listener is None and not self._stopped:
            self._listener = asyncio.create_task(self._listen(), name="event-hub")

    def _stop_listening(self) -> None:
        self._idle_stop = None
        if self._topics or self._listener is None:
            return
        self._listener.cancel()  # its pub/sub connection closes as it ends
        self._listener = None
        self._ready.clear()

    async def start(self) -> None:
        """Start listening now rather than at the first subscription; see `wait_ready`."""
        self._listen_while_needed()

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the channel is subscribed; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        """Stop listening and close every subscription."""
        self._stopped = True
        if self._idle_stop is not None:
            self._idle_stop.cancel()
            self._idle_stop = None
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        for subs in list(self._topics.values()):
            for subscription in list(subs):
                subscription.close()

    async def _listen(self) -> None:
        failures = 0
        # Nobody has read a stored state before the first subscription of this
        # listener (reads wait for it); after a reconnect everyone re-reads.
        resync = False
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue  # a health-check reply
                    if message["type"] == "subscribe":
                        failures = 0
                        self._on_subscribed(resync)
                        resync = True
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except Exception as exc:
                self._ready.clear()
                failures += 1
                delay = min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))
                logger.warning("event hub lost Redis (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            finally:
                await pubsub.aclose()

    def _on_subscribed(self, resync: bool) -> None:
        # Also sent when redis-py reconnects on its own: every resubscription
        # may follow a gap, so every open subscription re-reads the stored state.
        self.connections += 1
        self._ready.set()
        if not resync:
            return
        logger.info("event hub resubscribed; %d clients resync", self.subscription_count)
        for subs in list(self._topics.values()):
            for subscription in subs:
                subscription._put(Signal.RESYNC)

    def _dispatch(self, data: str) -> None:
        try:
            event = Event.parse(data)
        except ValueError:
            logger.warning("ignoring a malformed message on %s: %.200r", self.channel, data)
            return
        for subscription in self._topics.get(event.task_id, ()):
            subscription._put(event)


async def follow(
    subscription: Subscription,
    first: Event,
    *,
    after: int = 0,
    alive: Callable[[], bool] | None = None,
    idle: float = 1.0,
) -> AsyncGenerator[Event]:
    """Yield `first`, then every newer event of the task, each once, in order.

    `first` is the stored state read *after* subscribing (`EventHub.current`),
    so nothing published in between is lost; events whose seq is not above
    the last one yielded (or `after`, a client's Last-Event-ID) are dropped.
    Ends after a terminal
    event, when the subscription closes, when the task's state expires, or
    when `alive()` (asked every `idle` quiet seconds) turns False.
    """
    last = after
    event: Event | None = first
    while True:
        if event is not None:
            if event.seq > last:
                last = event.seq
                yield event
            if event.terminal:
                return
        item = await subscription.get(timeout=idle if alive else None)
        if item is None:
            if alive is not None and not alive():
                return
            event = None
        elif item is Signal.CLOSED:
            return
        elif item is Signal.RESYNC:
            event = await subscription.hub.current(subscription.task_id)
            if event is None:
                return
        else:
            event = item


async def relay(
    subscription: Subscription,
    first: Event,
    write: Writer,
    *,
    after: int = 0,
    alive: Callable[[], bool] | None = None,
    idle: float = 1.0,
) -> bool:
    """Give `write` what `follow` would yield (same arguments, same contract).

    While nothing waits in the subscription's queue, the hub calls `write`
    itself for each event of the task as it dispatches it: no task wakes up
    per event and client. Events published while the stored state is read
    (at the start, or after a RESYNC) queue up and are written from here,
    in order, before the hub takes over again.

    `write` must not wait. When it returns False (the client has too much
    unsent), the stored state is read again and written: if the client
    still cannot take it, the relay gives up and returns False; it returns
    True when the stream ended as `follow` would end.
    """
    subscription.last = after
    event: Event | None = first
    try:
        while True:
            if event is not None:
                if event.seq > subscription.last:
                    if not write(event):
                        return False
                    subscription.last = event.seq
                if event.terminal:
                    return True
            if not subscription._queue:
                subscription._writer = write  # live: the hub writes from now on
            item = await subscription.get(timeout=idle if alive else None)
            if item is None:
                if alive is not None and not alive():
                    return True
                event = None
            elif item is Signal.CLOSED:
                return True
            elif item is Signal.RESYNC:
                subscription._writer = None  # what comes while we read queues up
                if alive is not None and not alive():
                    return True  # gone (a write to a closed socket fails too): no read for it
                event = await subscription.hub.current(subscription.task_id)
                if event is None:
                    return True
            else:
                event = item
    finally:
        subscription._writer = None
