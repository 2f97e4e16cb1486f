"""The event hub, `follow` and `relay` against a real Valkey: order, races, resync, cleanup.

The contract tests run twice: through `follow` (the async generator of the
WebSocket) and through `relay` (the hub writing to a synchronous writer, as
for SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailhub.live.events import Event, EventHub, Signal, Subscription, follow, relay
from mailhub.store import keys
from mailhub.store.embedded_valkey import EmbeddedRedis, free_port
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from tests.conftest import running_worker
from tests.driver import REQUEST, TaskDriver, until
from tests.smtp_server import Fault


@contextlib.asynccontextmanager
async def running_hub(store: TaskStore, **options) -> AsyncIterator[EventHub]:  # type: ignore[no-untyped-def]
    hub = EventHub(store, **options)
    await hub.start()
    assert await hub.wait_ready(5.0)
    try:
        yield hub
    finally:
        await hub.stop()


@pytest.fixture
async def hub(store: TaskStore) -> AsyncIterator[EventHub]:
    async with running_hub(store) as running:
        yield running


async def current(store: TaskStore, task_id: str) -> Event:
    event = await EventHub(store).current(task_id)
    assert event is not None
    return event


def queued_seqs(subscription: Subscription) -> list[int | Signal]:
    """What waits in the subscription's queue, without taking it."""
    items = list(subscription._queue)
    return [item.seq if isinstance(item, Event) else item for item in items]


class Recorder:
    """A `relay` writer: keeps each event it is given and the asyncio task that gave it."""

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

    @property
    def seqs(self) -> list[int]:
        return [event.seq for event in self.events]


@pytest.fixture(params=["follow", "relay"])
def how(request: pytest.FixtureRequest) -> str:
    return request.param


async def collect(subscription: Subscription, first: Event, how: str = "follow", **options) -> list[dict]:  # type: ignore[no-untyped-def]
    if how == "relay":
        recorder = Recorder()
        assert await relay(subscription, first, recorder, **options)
        return [json.loads(event.data) for event in recorder.events]
    async with contextlib.aclosing(follow(subscription, first, **options)) as events:
        return [json.loads(event.data) async for event in events]


async def test_one_retry_gives_exactly_queued_attempt_retry_attempt_success(hub, store, settings, smtp, how):
    task_id = await store.enqueue(REQUEST)
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    with hub.subscribe(task_id) as subscription:
        first = await current(store, task_id)
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
    assert all(d["task_id"] == task_id and d["to"] == REQUEST.to and d["at"] for d in docs)


async def test_transitions_between_subscribe_and_read_are_sent_once(hub, store, how):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    subscription = hub.subscribe(task_id)
    await driver.begin_attempt()
    await driver.retry()
    # Events 2 and 3 are in the subscription's queue and in the stored state.
    await until(lambda: 3 in queued_seqs(subscription), what="event 3 queued")
    first = await current(store, task_id)
    assert first.seq == 3
    feed = asyncio.create_task(collect(subscription, first, how))
    await driver.begin_attempt()
    await driver.succeed()
    docs = await asyncio.wait_for(feed, 5)
    assert [d["seq"] for d in docs] == [3, 4, 5]
    assert hub.subscription_count == 1  # closing is the caller's job
    subscription.close()
    assert (hub.subscription_count, hub.task_count) == (0, 0)


async def test_racing_the_real_worker_misses_nothing_and_repeats_nothing(hub, store, settings, smtp, how):
    smtp.handler.faults.extend([Fault.reply_data("451 4.7.1 busy")] * 10)

    async def subscriber(task_id: str, delay_rounds: int) -> list[int]:
        for _ in range(delay_rounds):
            await asyncio.sleep(0)  # join at a different point of the task's life
        with hub.subscribe(task_id) as subscription:
            first = await current(store, task_id)
            return [d["seq"] for d in await collect(subscription, first, how)]

    async with running_worker(store, settings):
        task_ids = [await store.enqueue(REQUEST) for _ in range(20)]
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
        first = await current(store, task_id)
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
        docs = await asyncio.wait_for(collect(subscription, await current(store, task_id), how), 5)
    assert [(d["seq"], d["status"]) for d in docs] == [(3, "failed")]
    assert docs[0]["reason"] == "the receiving server refused the message"


async def test_closing_a_subscription_ends_its_feed_and_forgets_it(hub, store, how):
    task_id = await TaskDriver(store).enqueue()
    subscriptions = [hub.subscribe(task_id) for _ in range(3)]
    assert (hub.subscription_count, hub.task_count) == (3, 1)
    first = await current(store, task_id)
    feed = asyncio.create_task(collect(subscriptions[0], first, how))
    await until(lambda: subscriptions[0]._waiter is not None, what="the feed waiting")
    subscriptions[0].close()
    assert [d["seq"] for d in await asyncio.wait_for(feed, 5)] == [1]
    assert hub.subscription_count == 2
    for subscription in subscriptions:
        subscription.close()
    assert (hub.subscription_count, hub.task_count) == (0, 0)


async def test_alive_ends_a_quiet_feed(hub, store, how):
    task_id = await TaskDriver(store).enqueue()
    connected = True
    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(
            collect(subscription, await current(store, task_id), how, alive=lambda: connected, idle=0.01)
        )
        await asyncio.sleep(0.05)
        assert not feed.done()
        connected = False
        assert [d["seq"] for d in await asyncio.wait_for(feed, 5)] == [1]


async def test_a_subscriber_that_falls_behind_resyncs_from_the_stored_state(redis, store, how):
    async with running_hub(store, queue_size=2) as small_hub:
        driver = TaskDriver(store)
        task_id = await driver.enqueue()
        with small_hub.subscribe(task_id) as slow, small_hub.subscribe(task_id) as witness:
            first = await current(store, task_id)
            await driver.run_to_success_after_one_retry()  # 4 events into a queue of 2
            # The hub hands each event to every subscription at once: when the
            # witness has event 5, the slow one has had its chance too.
            seen = [await witness.get(timeout=5) for _ in range(2)]
            assert Signal.RESYNC in seen
            assert queued_seqs(slow)[0] is Signal.RESYNC
            docs = await asyncio.wait_for(collect(slow, first, how), 5)
    assert [d["seq"] for d in docs] == [1, 5]


async def test_malformed_messages_on_the_channel_are_ignored(hub, store, redis, caplog):
    task_id = await TaskDriver(store).enqueue()
    with hub.subscribe(task_id) as subscription:
        await redis.publish(keys.EVENTS, "not json")
        await redis.publish(keys.EVENTS, json.dumps({"task_id": task_id}))
        await redis.publish(keys.EVENTS, json.dumps({"task_id": task_id, "seq": 9, "status": "x"}))
        items = [await subscription.get(timeout=5) for _ in range(2)]
    # The queued event may still be in flight when the test subscribes.
    assert [item.seq for item in items if isinstance(item, Event)][-1] == 9
    assert caplog.text.count("ignoring a malformed message") == 2


async def test_a_killed_pubsub_connection_is_replaced_and_subscribers_resync(hub, store, redis):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    with hub.subscribe(task_id) as subscription:
        events = follow(subscription, await current(store, task_id))
        async with contextlib.aclosing(events):
            assert (await anext(events)).seq == 1
            assert len(await redis.client_list(_type="pubsub")) == 1
            await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await until(lambda: hub.connections == 2, what="the hub resubscribing")
            assert Signal.RESYNC in queued_seqs(subscription)
            await driver.begin_attempt()
            assert (await asyncio.wait_for(anext(events), 5)).seq == 2
            await driver.succeed()
            assert (await asyncio.wait_for(anext(events), 5)).seq == 3
    assert len(await redis.client_list(_type="pubsub")) == 1


async def test_a_redis_restart_is_survived_with_backoff(tmp_path: Path, caplog):
    server = EmbeddedRedis(tmp_path, port=free_port(), persist=True)
    server.start()
    redis = connect(server.url)
    try:
        store = TaskStore(redis, retention=60, max_attempts=3, message_id_domain="example.com")
        driver = TaskDriver(store)
        task_id = await driver.enqueue()
        async with running_hub(store, backoff_base=0.05, backoff_cap=0.2) as hub:
            with hub.subscribe(task_id) as subscription:
                events = follow(subscription, await current(store, task_id))
                async with contextlib.aclosing(events):
                    assert (await anext(events)).seq == 1
                    await asyncio.to_thread(server.stop)
                    await until(lambda: not hub._ready.is_set(), what="the hub noticing the outage")
                    await asyncio.to_thread(server.start)
                    # Published before or after the hub is back: an event, or found
                    # by the resync that follows the resubscription; either way once.
                    await driver.begin_attempt()
                    assert (await asyncio.wait_for(anext(events), 5)).seq == 2
                    await until(lambda: hub.connections == 2, what="the hub resubscribing")
                    await driver.succeed()
                    assert (await asyncio.wait_for(anext(events), 5)).seq == 3
                    with pytest.raises(StopAsyncIteration):
                        await asyncio.wait_for(anext(events), 5)
        assert "event hub lost Redis" in caplog.text
    finally:
        await redis.aclose()
        server.stop()


async def test_stop_closes_every_subscription(redis, store):
    task_id = await TaskDriver(store).enqueue()
    async with running_hub(store) as hub:
        subscription = hub.subscribe(task_id)
        waiting = asyncio.create_task(subscription.get())
        await asyncio.sleep(0)
    assert await asyncio.wait_for(waiting, 5) is Signal.CLOSED
    assert subscription.closed and hub.subscription_count == 0


async def test_relay_events_are_written_by_the_hub_as_it_dispatches(hub, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorders = [Recorder() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        subscriptions = [stack.enter_context(hub.subscribe(task_id)) for _ in recorders]
        first = await current(store, task_id)
        relays = [
            asyncio.create_task(relay(s, first, r), name=f"relay-{n}")
            for n, (s, r) in enumerate(zip(subscriptions, recorders))
        ]
        await until(lambda: all(s._writer is not None for s in subscriptions), what="relays live")
        await driver.begin_attempt()
        await driver.retry()
        await driver.begin_attempt()
        await driver.succeed()
        assert await asyncio.wait_for(asyncio.gather(*relays), 5) == [True] * 3
    for n, recorder in enumerate(recorders):
        assert recorder.seqs == [1, 2, 3, 4, 5]
        # The stored state comes from the relay; every transition from the hub's own task.
        assert recorder.writers == [f"relay-{n}"] + ["event-hub"] * 4
    assert hub.subscription_count == 0


async def test_relay_resyncs_a_writer_that_took_no_more_and_goes_on(hub, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder = Recorder(refuse=1)
    with hub.subscribe(task_id) as subscription:
        first = await current(store, task_id)
        feed = asyncio.create_task(relay(subscription, first, recorder))
        await until(lambda: subscription._writer is not None, what="the relay live")
        await driver.begin_attempt()  # refused, then written again from the stored state
        await until(lambda: recorder.seqs == [1, 2], what="event 2 after the resync")
        await until(lambda: subscription._writer is not None, what="the relay live again")
        await driver.succeed()
        assert await asyncio.wait_for(feed, 5) is True
    assert recorder.refused == [2]
    assert recorder.seqs == [1, 2, 3]


async def test_relay_gives_up_on_a_writer_that_takes_no_more_after_the_resync(hub, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder = Recorder(refuse=2)
    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(relay(subscription, await current(store, task_id), recorder))
        await until(lambda: subscription._writer is not None, what="the relay live")
        await driver.begin_attempt()
        assert await asyncio.wait_for(feed, 5) is False
        assert subscription._writer is None
    assert (recorder.seqs, recorder.refused) == ([1], [2, 2])


async def test_relay_resyncs_after_the_pubsub_connection_is_killed(hub, store, redis):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder = Recorder()
    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(relay(subscription, await current(store, task_id), recorder))
        await until(lambda: subscription._writer is not None, what="the relay live")
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await until(lambda: hub.connections == 2, what="the hub resubscribing")
        await driver.begin_attempt()
        await until(lambda: recorder.seqs == [1, 2], what="event 2")
        await driver.succeed()
        assert await asyncio.wait_for(feed, 5) is True
    assert recorder.seqs == [1, 2, 3]
    assert len(await redis.client_list(_type="pubsub")) == 1


async def test_relay_ends_without_a_read_when_a_refused_client_is_gone(hub, store, monkeypatch):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    recorder, connected, reads = Recorder(refuse=1), True, []
    read_state = store.result

    async def counted_read(task_id: str) -> str | None:
        reads.append(task_id)
        return await read_state(task_id)

    with hub.subscribe(task_id) as subscription:
        feed = asyncio.create_task(
            relay(subscription, await current(store, task_id), recorder, alive=lambda: connected, idle=60)
        )
        await until(lambda: subscription._writer is not None, what="the relay live")
        monkeypatch.setattr(store, "result", counted_read)
        connected = False  # the socket closed: the next write is refused
        await driver.begin_attempt()
        assert await asyncio.wait_for(feed, 5) is True
    assert (recorder.seqs, recorder.refused, reads) == ([1], [2], [])


async def test_the_hub_listens_only_while_someone_follows(store, redis):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    hub = EventHub(store, linger=0.05)
    try:
        assert await redis.client_list(_type="pubsub") == []  # nobody follows: no subscription
        with hub.subscribe(task_id) as subscription:
            events = follow(subscription, await hub.current(task_id))  # waits for the subscription
            async with contextlib.aclosing(events):
                assert (await anext(events)).seq == 1
                assert len(await redis.client_list(_type="pubsub")) == 1
                await driver.begin_attempt()
                assert (await asyncio.wait_for(anext(events), 5)).seq == 2
        deadline = time.monotonic() + 5
        while await redis.client_list(_type="pubsub"):  # `linger` after the last follower left
            assert time.monotonic() < deadline, "the hub kept its subscription"
            await asyncio.sleep(0.01)
        with hub.subscribe(task_id) as subscription:  # listens again for the next follower
            events = follow(subscription, await hub.current(task_id))
            async with contextlib.aclosing(events):
                assert (await anext(events)).seq == 2
                await driver.succeed()
                assert (await asyncio.wait_for(anext(events), 5)).seq == 3
    finally:
        await hub.stop()
