"""The event hub and its subscriptions against a real Valkey: order, races, resync, cleanup.

The contract tests run twice, once per writer mode: `Queued` (the
subscription's loop sends each event, as for a WebSocket) and `Direct` (the
hub writes each event itself as it dispatches it, as for SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailhub.live.event import Event
from mailhub.live.hub import EventHub
from mailhub.live.subscription import Direct, Queued, Subscription, Writer
from mailhub.store import keys
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from tests.driver import TaskDriver
from tests.helpers import MAIL, enqueue, eventually, free_port, running_worker
from tests.smtp_server import Fault


@contextlib.asynccontextmanager
async def running_hub(store: TaskStore, **options: Any) -> AsyncIterator[EventHub]:
    hub = EventHub(store, **options)
    try:
        yield hub
    finally:
        await hub.stop()


@pytest.fixture
async def hub(store: TaskStore) -> AsyncIterator[EventHub]:
    async with running_hub(store) as running:
        yield running


async def current(hub: EventHub, task_id: str) -> Event:
    """The stored state, read as a stream reads it: once the hub's channel is subscribed."""
    event = await hub.current(task_id)
    assert event is not None
    return event


class Recorder:
    """A writer's client: keeps each event it is given and the asyncio task that gave it."""

    def __init__(self, refuse: int = 0) -> None:
        self.events: list[Event] = []
        self.writers: list[str] = []
        #: Say "no more" to this many writes (after the first event), as a full socket would.
        self.refuse = refuse
        self.refused: list[int] = []

    def __call__(self, event: Event) -> bool:
        if self.events and self.refuse:
            self.refuse -= 1
            self.refused.append(event.seq)
            return False
        self.events.append(event)
        task = asyncio.current_task()
        self.writers.append(task.get_name() if task else "")
        return True

    async def send(self, event: Event) -> None:
        self(event)

    def writer(self, how: str) -> Writer:
        return Direct(self) if how == "direct" else Queued(self.send)

    @property
    def seqs(self) -> list[int]:
        return [event.seq for event in self.events]


@pytest.fixture(params=["queued", "direct"])
def how(request: pytest.FixtureRequest) -> str:
    return request.param


async def collect(
    subscription: Subscription, first: Event, how: str = "queued", **options: Any
) -> list[dict[str, Any]]:
    recorder = Recorder()
    assert await subscription.run(first, recorder.writer(how), **options)
    return [json.loads(event.data) for event in recorder.events]


@contextlib.asynccontextmanager
async def witness(hub: EventHub, task_id: str) -> AsyncIterator[Recorder]:
    """A second, live subscription to the task: the hub hands each event to every
    subscription of the task at once, so when the witness has an event, so has every other."""
    recorder = Recorder()
    with hub.subscribe(task_id) as subscription:
        running = asyncio.create_task(subscription.run(await current(hub, task_id), Direct(recorder)))
        await eventually(lambda: subscription.live, what="the witness live")
        try:
            yield recorder
        finally:
            subscription.close()
            await running


async def test_one_retry_gives_exactly_queued_attempt_retry_attempt_success(hub, store, settings, smtp, how):
    task_id = await enqueue(store)
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    with hub.subscribe(task_id) as subscription:
        first = await current(hub, task_id)
        async with running_worker(store, settings):
            docs = await asyncio.wait_for(collect(subscription, first, how), 10)
    assert [(d["event"], d["status"], d["attempts"]) for d in docs] == [
        ("queued", "pending", 0),
        ("attempt", "pending", 1),
        ("retry", "pending", 1),
        ("attempt", "pending", 2),
        ("success", "success", 2),
    ]
    assert [d["seq"] for d in docs] == [1, 2, 3, 4, 5]
    assert docs[2]["last_error"] == "temporary failure, retrying"
    assert docs[2]["next_attempt_at"]
    assert all(d["task_id"] == task_id and d["to"] == MAIL.to and d["at"] for d in docs)


async def test_transitions_between_subscribe_and_read_are_sent_once(hub, store, how):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    subscription = hub.subscribe(task_id)
    async with witness(hub, task_id) as seen:
        await driver.begin_attempt()
        await driver.retry()
        # Events 2 and 3 reached the subscription, and are in the stored state.
        await eventually(lambda: seen.seqs == [1, 2, 3], what="event 3 dispatched")
    first = await current(hub, task_id)
    assert first.seq == 3
    feed = asyncio.create_task(collect(subscription, first, how))
    await driver.begin_attempt()
    await driver.succeed()
    docs = await asyncio.wait_for(feed, 5)
    assert [d["seq"] for d in docs] == [3, 4, 5]
    assert subscription.closed  # a feed that ended closes its subscription
    assert (hub.subscription_count, hub.task_count) == (0, 0)


async def test_racing_the_real_worker_misses_nothing_and_repeats_nothing(hub, store, settings, smtp, how):
    smtp.handler.faults.extend([Fault.reply_data("451 4.3.0 busy")] * 10)

    async def subscriber(task_id: str, delay_rounds: int) -> list[int]:
        for _ in range(delay_rounds):
            await asyncio.sleep(0)  # join at a different point of the task's life
        with hub.subscribe(task_id) as subscription:
            first = await current(hub, task_id)
            return [d["seq"] for d in await collect(subscription, first, how)]

    async with running_worker(store, settings):
        task_ids = [await enqueue(store) for _ in range(20)]
        seqs = await asyncio.wait_for(
            asyncio.gather(*(subscriber(t, n * 3) for n, t in enumerate(task_ids))), 20
        )
    for task_id, task_seqs in zip(task_ids, seqs):
        assert task_seqs == list(range(task_seqs[0], task_seqs[-1] + 1))
        final = json.loads(await store.result(task_id) or "{}")
        assert task_seqs[-1] == final["seq"] and final["status"] == "success"


async def test_after_skips_what_the_client_already_has(hub, store, how):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    await driver.begin_attempt()
    await driver.retry()
    with hub.subscribe(task_id) as subscription:
        first = await current(hub, task_id)
        feed = asyncio.create_task(collect(subscription, first, how, after=3))
        await driver.begin_attempt()
        await driver.succeed()
        docs = await asyncio.wait_for(feed, 5)
    assert [d["seq"] for d in docs] == [4, 5]


async def test_a_late_subscriber_gets_the_final_state_and_the_feed_ends(hub, store, how):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    await driver.begin_attempt()
    await driver.fail()
    with hub.subscribe(task_id) as subscription:
        docs = await asyncio.wait_for(collect(subscription, await current(hub, task_id), how), 5)
    assert [(d["seq"], d["status"]) for d in docs] == [(3, "failed")]
    assert docs[0]["reason"] == "the receiving server refused the message"


async def test_closing_a_subscription_ends_its_feed_and_forgets_it(hub, store, how):
    task_id = await TaskDriver(store).enqueue()
    subscriptions = [hub.subscribe(task_id) for _ in range(3)]
    assert (hub.subscription_count, hub.task_count) == (3, 1)
    first = await current(hub, task_id)
    recorder = Recorder()
    feed = asyncio.create_task(subscriptions[0].run(first, recorder.writer(how)))
    await eventually(lambda: recorder.seqs == [1], what="the feed started")
    subscriptions[0].close()
    assert await asyncio.wait_for(feed, 5) is True
    assert hub.subscription_count == 2
    for subscription in subscriptions:
        subscription.close()
    assert (hub.subscription_count, hub.task_count) == (0, 0)


async def test_a_subscription_closed_before_it_runs_is_forgotten_and_gives_nothing(hub, store, how):
    task_id = await TaskDriver(store).enqueue()
    subscription = hub.subscribe(task_id)
    first = await current(hub, task_id)
    subscription.close()  # e.g. a WebSocket unsubscribed before the task running it started
    assert (hub.subscription_count, hub.task_count) == (0, 0)
    assert await asyncio.wait_for(collect(subscription, first, how), 5) == []


async def test_alive_ends_a_quiet_feed(hub, store, how):
    task_id = await TaskDriver(store).enqueue()
    connected = True
    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(
            collect(subscription, await current(hub, task_id), how, alive=lambda: connected, idle=0.01)
        )
        await asyncio.sleep(0.05)
        assert not feed.done()
        connected = False
        assert [d["seq"] for d in await asyncio.wait_for(feed, 5)] == [1]


async def test_a_subscriber_that_falls_behind_resyncs_from_the_stored_state(redis, store, how):
    async with running_hub(store, queue_size=2) as small_hub:
        driver = TaskDriver(store)
        task_id = await driver.enqueue()
        with small_hub.subscribe(task_id) as slow:
            first = await current(small_hub, task_id)
            async with witness(small_hub, task_id) as seen:
                await driver.run_to_success_after_one_retry()  # 4 events into a queue of 2
                await eventually(lambda: seen.seqs == [1, 2, 3, 4, 5], what="every event dispatched")
            docs = await asyncio.wait_for(collect(slow, first, how), 5)
    assert [d["seq"] for d in docs] == [1, 5]


async def test_malformed_messages_on_the_channel_are_ignored(hub, store, redis, caplog):
    task_id = await TaskDriver(store).enqueue()
    async with witness(hub, task_id) as seen:
        await redis.publish(keys.EVENTS, "not json")
        await redis.publish(keys.EVENTS, json.dumps({"task_id": task_id}))
        await redis.publish(keys.EVENTS, json.dumps({"task_id": task_id, "seq": 9, "status": "x"}))
        await eventually(lambda: seen.seqs == [1, 9], what="the well-formed event")
    assert caplog.text.count("ignoring a malformed message") == 2


async def test_a_killed_pubsub_connection_is_replaced_and_subscribers_resync(hub, store, redis, caplog, how):
    caplog.set_level(logging.INFO, logger="mailhub.live.hub")
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder = Recorder()
    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(subscription.run(await current(hub, task_id), recorder.writer(how)))
        await eventually(lambda: recorder.seqs == [1], what="the first event")
        assert len(await redis.client_list(_type="pubsub")) == 1
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: hub.connections == 2, what="the hub resubscribing")
        assert "event hub resubscribed; 1 clients resync" in caplog.text
        await driver.begin_attempt()
        await eventually(lambda: recorder.seqs == [1, 2], what="event 2")
        await driver.succeed()
        assert await asyncio.wait_for(feed, 5) is True
    assert recorder.seqs == [1, 2, 3]
    assert len(await redis.client_list(_type="pubsub")) == 1


async def test_a_redis_restart_is_survived_with_backoff(tmp_path: Path, caplog, how):
    server = EmbeddedRedis(tmp_path, port=free_port(), persist=True)
    server.start()
    redis = connect(server.url)
    try:
        store = TaskStore(redis, retention=60, max_attempts=3, message_id_domain="example.com")
        driver = TaskDriver(store)
        task_id = await driver.enqueue()
        recorder = Recorder()
        async with running_hub(store, backoff_base=0.05, backoff_cap=0.2) as hub:
            with hub.subscribe(task_id) as subscription:
                first = await current(hub, task_id)
                feed = asyncio.create_task(subscription.run(first, recorder.writer(how)))
                await eventually(lambda: recorder.seqs == [1], what="the first event")
                await asyncio.to_thread(server.stop)
                await eventually(lambda: not hub.ready, what="the hub noticing the outage")
                await asyncio.to_thread(server.start)
                # Published before or after the hub is back: an event, or found
                # by the resync that follows the resubscription; either way once.
                await driver.begin_attempt()
                await eventually(lambda: recorder.seqs == [1, 2], what="event 2")
                await eventually(lambda: hub.connections == 2, what="the hub resubscribing")
                await driver.succeed()
                assert await asyncio.wait_for(feed, 5) is True
        assert recorder.seqs == [1, 2, 3]
        assert "event hub lost Redis" in caplog.text
    finally:
        await redis.aclose()
        server.stop()


async def test_stop_closes_every_subscription(redis, store, how):
    task_id = await TaskDriver(store).enqueue()
    recorder = Recorder()
    async with running_hub(store) as hub:
        subscription = hub.subscribe(task_id)
        feed = asyncio.create_task(subscription.run(await current(hub, task_id), recorder.writer(how)))
        await eventually(lambda: recorder.seqs == [1], what="the feed started")
    assert await asyncio.wait_for(feed, 5) is True
    assert subscription.closed and hub.subscription_count == 0


async def test_direct_events_are_written_by_the_hub_as_it_dispatches(hub, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorders = [Recorder() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        subscriptions = [stack.enter_context(hub.subscribe(task_id)) for _ in recorders]
        first = await current(hub, task_id)
        feeds = [
            asyncio.create_task(s.run(first, Direct(r)), name=f"feed-{n}")
            for n, (s, r) in enumerate(zip(subscriptions, recorders))
        ]
        await eventually(lambda: all(s.live for s in subscriptions), what="the feeds live")
        await driver.begin_attempt()
        await driver.retry()
        await driver.begin_attempt()
        await driver.succeed()
        assert await asyncio.wait_for(asyncio.gather(*feeds), 5) == [True] * 3
    for n, recorder in enumerate(recorders):
        assert recorder.seqs == [1, 2, 3, 4, 5]
        # The stored state comes from the feed's loop; every transition from the hub's own task.
        assert recorder.writers == [f"feed-{n}"] + ["event-hub"] * 4
    assert hub.subscription_count == 0


async def test_queued_events_are_sent_by_the_subscription_loop(hub, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder = Recorder()
    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(
            subscription.run(await current(hub, task_id), Queued(recorder.send)), name="feed"
        )
        await driver.run_to_success_after_one_retry()
        assert await asyncio.wait_for(feed, 5) is True
        assert not subscription.live  # a Queued writer never lets the hub write
    assert recorder.seqs == [1, 2, 3, 4, 5]
    assert recorder.writers == ["feed"] * 5


async def test_direct_resyncs_a_writer_that_took_no_more_and_goes_on(hub, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder = Recorder(refuse=1)
    with hub.subscribe(task_id) as subscription:
        first = await current(hub, task_id)
        feed = asyncio.create_task(subscription.run(first, Direct(recorder)))
        await eventually(lambda: subscription.live, what="the feed live")
        await driver.begin_attempt()  # refused, then written again from the stored state
        await eventually(lambda: recorder.seqs == [1, 2], what="event 2 after the resync")
        await eventually(lambda: subscription.live, what="the feed live again")
        await driver.succeed()
        assert await asyncio.wait_for(feed, 5) is True
    assert recorder.refused == [2]
    assert recorder.seqs == [1, 2, 3]


async def test_direct_gives_up_on_a_writer_that_takes_no_more_after_the_resync(hub, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder = Recorder(refuse=2)
    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(subscription.run(await current(hub, task_id), Direct(recorder)))
        await eventually(lambda: subscription.live, what="the feed live")
        await driver.begin_attempt()
        assert await asyncio.wait_for(feed, 5) is False
        assert not subscription.live
    assert (recorder.seqs, recorder.refused) == ([1], [2, 2])


async def test_direct_ends_without_a_read_when_a_refused_client_is_gone(hub, store, monkeypatch):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder, connected, reads = Recorder(refuse=1), True, []
    read_state = store.result

    async def counted_read(task_id: str) -> str | None:
        reads.append(task_id)
        return await read_state(task_id)

    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(
            subscription.run(await current(hub, task_id), Direct(recorder), alive=lambda: connected, idle=60)
        )
        await eventually(lambda: subscription.live, what="the feed live")
        monkeypatch.setattr(store, "result", counted_read)
        connected = False  # the socket closed: the next write is refused
        await driver.begin_attempt()
        assert await asyncio.wait_for(feed, 5) is True
    assert (recorder.seqs, recorder.refused, reads) == ([1], [2], [])


async def test_the_hub_listens_only_while_someone_follows(store, redis, how):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    hub = EventHub(store, linger=0.05)
    try:
        assert await redis.client_list(_type="pubsub") == []  # nobody follows: no subscription
        recorder = Recorder()
        with hub.subscribe(task_id) as subscription:
            # `current` waits for the channel's subscription.
            feed = asyncio.create_task(subscription.run(await hub.current(task_id), recorder.writer(how)))
            await eventually(lambda: recorder.seqs == [1], what="the first event")
            assert len(await redis.client_list(_type="pubsub")) == 1
            await driver.begin_attempt()
            await eventually(lambda: recorder.seqs == [1, 2], what="event 2")
        assert await asyncio.wait_for(feed, 5) is True
        deadline = time.monotonic() + 5
        while await redis.client_list(_type="pubsub"):  # `linger` after the last follower left
            assert time.monotonic() < deadline, "the hub kept its subscription"
            await asyncio.sleep(0.01)
        recorder = Recorder()
        with hub.subscribe(task_id) as subscription:  # listens again for the next follower
            feed = asyncio.create_task(subscription.run(await hub.current(task_id), recorder.writer(how)))
            await eventually(lambda: recorder.seqs == [2], what="the stored state")
            await driver.succeed()
            assert await asyncio.wait_for(feed, 5) is True
        assert recorder.seqs == [2, 3]
    finally:
        await hub.stop()
