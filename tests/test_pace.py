"""The send pace: SMTP_RATE shared by every worker, and the slow-down after a throttling reply."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from prometheus_client import REGISTRY

from mailhub.store import keys
from mailhub.store.pace import Permits, SendPace
from tests.helpers import enqueue, eventually, result_of, worker_for
from tests.smtp_server import Throttle


async def granted(pace: SendPace, wanted: int) -> Permits | None:
    """Permits if any were granted (for `eventually`)."""
    permits = await pace.reserve(wanted)
    return permits if permits.granted else None


async def test_permits_stop_at_the_rate_and_say_when_the_next_is_due(redis):
    pace, other_worker = SendPace(redis, ((5, 1),)), SendPace(redis, ((5, 1),))
    first = await pace.reserve(3)
    second = await other_worker.reserve(3)
    refused = await pace.reserve(1)
    assert (first.granted, second.granted, refused.granted) == (3, 2, 0)
    assert 0 < refused.wait <= 1.0
    await eventually(lambda: granted(pace, 1), what="a permit once the oldest is a second old")


async def test_unused_permits_are_given_back(redis):
    pace = SendPace(redis, ((4, 1), (6, 3600)))
    permits = await pace.reserve(4)
    await pace.give_back(permits, used=1)
    assert await redis.zcard(keys.pace_log(1)) == await redis.zcard(keys.pace_log(3600)) == 1
    assert (await pace.reserve(9)).granted == 3
    # Every window counts: the hour has 2 of its 6 left.
    await redis.delete(keys.pace_log(1))
    assert (await pace.reserve(9)).granted == 2


async def test_a_throttling_reply_pauses_then_halves_the_pace_and_deepens_only_for_later_sends(redis):
    pace = SendPace(redis, throttle_pause=0.2, throttle_recovery=30)
    burst = await pace.reserve(10)
    assert burst.granted == 10
    slowdown = await pace.throttled(burst.at)
    assert slowdown is not None
    assert (slowdown.level, slowdown.pause, slowdown.per_second) == (1, 0.2, 5)
    # The other sends of the burst began before the slow-down: their replies join it.
    assert await pace.throttled(burst.at) is None
    paused = await pace.reserve(1)
    assert paused.granted == 0
    assert 0.1 < paused.wait <= 0.2
    later = await eventually(lambda: granted(pace, 10), timeout=3, what="a permit after the pause")
    assert later.granted <= 5
    deeper = await pace.throttled(later.at)
    assert deeper is not None
    assert (deeper.level, deeper.pause) == (2, 0.4)
    assert deeper.per_second <= 5 // 2


async def test_the_slow_down_is_lifted_after_quiet(redis):
    pace = SendPace(redis, throttle_pause=0.05, throttle_recovery=0.2)
    burst = await pace.reserve(10)
    assert await pace.throttled(burst.at) is not None

    async def lifted() -> bool:
        return not await redis.exists(keys.PACE_THROTTLE)

    await eventually(lifted, timeout=3, what="the slow-down lifted")
    await redis.delete(keys.pace_log(1))
    assert (await pace.reserve(10)).granted == 10


def _sampled(value: float | None) -> float:
    return value or 0.0


def _throttled_count(event: str) -> float:
    return _sampled(REGISTRY.get_sample_value("mailhub_smtp_throttled_total", {"event": event}))


async def _most_held(store, done: asyncio.Event) -> int:
    """The most queue entries the workers held at once, sampled until `done`."""
    most = 0
    while not done.is_set():
        most = max(most, sum(c.pending for c in await store.queue.consumers()))
        await asyncio.sleep(0.02)
    return most


async def test_smtp_rate_holds_every_worker_to_the_pace_without_spending_attempts(store, settings, smtp):
    count, rate = 50, 10
    task_ids = [await enqueue(store) for _ in range(count)]
    done = asyncio.Event()
    held = asyncio.create_task(_most_held(store, done))
    started = time.monotonic()
    async with (
        worker_for(store, settings, smtp_rate=f"{rate}/second") as one,
        worker_for(store, settings, smtp_rate=f"{rate}/second") as two,
    ):
        await asyncio.gather(one.drain(timeout=30), two.drain(timeout=30))
    took = time.monotonic() - started
    done.set()
    documents = [await result_of(store, task_id) for task_id in task_ids]
    assert Counter((d["status"], d["attempts"]) for d in documents) == {("success", 1): count}
    # 10 a second, the first 10 at once: the 50th may start 4 s after the first.
    assert took >= 4.0
    arrivals = sorted(m.received_at for m in await smtp.handler.wait_for_count(count))
    for n in range(rate, count, rate):
        assert arrivals[n] - arrivals[0] >= n // rate - 0.5, f"mail {n + 1} came too early"
    # Mail over the pace stays on the stream, unread: no worker holds more than a second's worth.
    assert await held <= rate


async def test_a_throttling_server_slows_the_worker_instead_of_failing_mail(store, settings, smtp, caplog):
    count = 24
    smtp.handler.throttle = Throttle(per_second=10)
    task_ids = [await enqueue(store) for _ in range(count)]
    slowdowns_before, replies_before = _throttled_count("slowdown"), _throttled_count("reply")
    caplog.set_level(logging.WARNING, logger="mailhub.delivery.worker")
    # The pause outlasts the server's one-second window, as the default (2 s) does. The server
    # counts accepted mail, which trails our permits by each send's time, so after a pause
    # shorter than its window the first sends could meet the end of the window the burst
    # filled, by a few milliseconds, and rightly deepen the slow-down.
    async with worker_for(store, settings, smtp_throttle_pause=1.2) as worker:
        await worker.drain(timeout=60)
    documents = [await result_of(store, task_id) for task_id in task_ids]
    assert {d["status"] for d in documents} == {"success"}
    # Only the sends already under way when the server said "too many" spent an extra attempt.
    extra = sum(d["attempts"] - 1 for d in documents)
    assert 0 < extra <= settings.worker_concurrency
    assert max(d["attempts"] for d in documents) == 2
    assert smtp.handler.throttled == extra == _throttled_count("reply") - replies_before
    episodes = [r for r in caplog.records if "asks to slow down" in r.getMessage()]
    assert len(episodes) == _throttled_count("slowdown") - slowdowns_before == 1
    assert len(await smtp.handler.wait_for_count(count)) == count
