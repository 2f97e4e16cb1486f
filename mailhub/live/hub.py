"""The event hub: one Redis pub/sub connection per process, fanned out.

The Lua scripts of `store.scripts` publish every transition on `keys.EVENTS`.
An `EventHub` holds the process's only subscription to that channel and
hands each event to the `Subscription`s of its task (one per SSE stream, one
per task a WebSocket follows), and every message to the `AllTasks` feeds of
the owner's dashboards; after a reconnect it tells every one of them to
re-read the stored state. When the owner deletes a task, its followers'
subscriptions are closed.

Nothing here imports aiohttp: the web layer passes the task store (and so
its Redis client) in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from mailhub.live.event import Event, deleted_task
from mailhub.live.subscription import Subscription
from mailhub.live.watch import AllTasks
from mailhub.store import keys
from mailhub.store.tasks import TaskStore

logger = logging.getLogger(__name__)


class EventHub:
    """The process's one subscription to the events channel, shared by all clients.

    The hub listens only while someone follows a task (or all of them), and
    for `linger` seconds after the last one left: a web process nobody
    watches does not read every transition of every mail.
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
        self._all: set[AllTasks] = set()
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

    @property
    def ready(self) -> bool:
        """True while the channel is subscribed: no event can be missed."""
        return self._ready.is_set()

    def subscribe(self, task_id: str) -> Subscription:
        """Start receiving the events of `task_id`; then read its state with `current`."""
        subscription = Subscription(
            task_id, read_state=self.current, on_close=self._forget, queue_size=self.queue_size
        )
        self._topics.setdefault(task_id, set()).add(subscription)
        self._listen_while_needed()
        return subscription

    def watch_all(self, queue_size: int = 1000) -> AllTasks:
        """Start receiving every task's events and deletions; see `listening`."""
        feed = AllTasks(on_close=self._forget_feed, queue_size=queue_size)
        self._all.add(feed)
        self._listen_while_needed()
        return feed

    async def listening(self) -> bool:
        """Wait until the channel is subscribed (nothing published from then on is missed);
        False if that takes longer than `ready_timeout`."""
        return self._ready.is_set() or await self._wait_ready()

    async def current(self, task_id: str) -> Event | None:
        """The task's stored state, or None if it is unknown or expired.

        While the hub is (re)subscribing, waits for it first: a state read
        before that could miss an event published in between. A
        `RedisConnectionError` if the channel is not subscribed within
        `ready_timeout` seconds.
        """
        if self._listener is not None and not self._ready.is_set() and not await self._wait_ready():
            raise RedisConnectionError("live events are unavailable: Redis does not answer")
        async with self._reads:
            stored = await self.store.result(task_id)
        return None if stored is None else Event.parse(stored)

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
        for feed in list(self._all):
            feed.close()

    def _forget(self, subscription: Subscription) -> None:
        subs = self._topics.get(subscription.task_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._topics[subscription.task_id]
        self._stop_when_idle()

    def _forget_feed(self, feed: AllTasks) -> None:
        self._all.discard(feed)
        self._stop_when_idle()

    def _stop_when_idle(self) -> None:
        if not self._topics and not self._all and self._listener is not None and self._idle_stop is None:
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
        if self._topics or self._all or self._listener is None:
            return
        self._listener.cancel()  # its pub/sub connection closes as it ends
        self._listener = None
        self._ready.clear()

    async def _wait_ready(self) -> bool:
        try:
            async with asyncio.timeout(self.ready_timeout):
                await self._ready.wait()
            return True
        except TimeoutError:
            return False

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
            for subscription in list(subs):
                subscription.resync()
        for feed in list(self._all):
            feed.resync()

    def _dispatch(self, data: str) -> None:
        deleted = deleted_task(data)
        if deleted is not None:
            # Its followers' streams end; a reconnect finds no task (404).
            for subscription in list(self._topics.get(deleted, ())):
                subscription.close()
        else:
            try:
                event = Event.parse(data)
            except ValueError:
                logger.warning("ignoring a malformed message on %s: %.200r", self.channel, data)
                return
            for subscription in self._topics.get(event.task_id, ()):
                subscription.deliver(event)
        for feed in self._all:
            feed.deliver(data)
