"""Webhooks against a real Valkey, a real SMTP server and a real receiver that verifies
every signature with the `standardwebhooks` reference package."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import RedisError

from mailhub.notify import notifier
from mailhub.notify.webhooks import SCHEDULE, retry_delay
from mailhub.settings import Settings
from mailhub.store import keys
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.outbox import Outbox, forget_address
from mailhub.store.redis_client import connect
from mailhub.store.tasks import EmailRequest, TaskStore
from mailhub.store.webhooks import WebhookQueue, delivery_state, shown_url
from mailhub.web.app import create_app
from tests.helpers import (
    MAIL,
    MAIL_JSON,
    SUBMIT,
    enqueue,
    eventually,
    free_port,
    running_worker,
    settings_for,
    smtp_env,
    wait_for_status,
)
from tests.processes import mailhub_serving
from tests.smtp_server import Fault
from tests.webhook_receiver import SECRET, WebhookReceiver


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as running:
        yield running


@pytest.fixture
def settings(valkey, smtp, receiver) -> Settings:
    return settings_for(
        smtp,
        redis_url=valkey.url,
        webhook_urls=(receiver.url,),
        webhook_secret=SECRET,
        webhook_retry_base_delay=0.2,
        webhook_timeout=2.0,
    )


def counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("mailhub_webhooks_total", {"outcome": outcome}) or 0.0


async def test_a_refused_mail_sends_a_signed_email_failed(store, settings, smtp, receiver):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    async with running_worker(store, settings), notifier.running(settings):
        task_id = await enqueue(store)
        [hook] = await receiver.wait_for("email.failed")
    assert not receiver.of_type("email.delivered")
    assert hook.headers["webhook-id"].startswith("msg_")
    assert abs(int(hook.headers["webhook-timestamp"]) - time.time()) < 10
    assert hook.headers["webhook-signature"].startswith("v1,")
    assert hook.headers["content-type"] == "application/json"
    payload = hook.payload
    assert payload is not None and payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert (data["task_id"], data["status"], data["to"], data["event"]) == (
        task_id,
        "failed",
        MAIL.to,
        "failed",
    )
    assert data["reason"] == "the receiving server refused the message"
    assert "550 5.1.1 no such user" in data["detail"]  # the owner's webhook has the reply


async def test_a_delivered_mail_sends_email_delivered_with_its_result_document(store, settings, receiver):
    async with running_worker(store, settings), notifier.running(settings):
        task_id = await enqueue(store)
        document = await wait_for_status(store, task_id)
        [hook] = await receiver.wait_for("email.delivered")
    assert hook.payload == {"type": "email.delivered", "timestamp": document["at"], "data": document}


async def test_answered_500_then_200_arrives_again_with_the_same_id(store, settings, receiver):
    receiver.answers.append(500)
    before = counter("failed"), counter("delivered")
    async with running_worker(store, settings), notifier.running(settings):
        await enqueue(store)
        first, second = await receiver.wait_for("email.delivered", 2)
    assert (first.answered, second.answered) == (500, 200)
    assert first.id == second.id
    assert first.body == second.body
    assert (counter("failed"), counter("delivered")) == (before[0] + 1, before[1] + 1)
    state = await delivery_state(store.redis, settings.webhook_urls)
    assert (state.pending, state.delivered, state.failed_attempts, state.dropped) == (0, 1, 1, 0)
    [endpoint] = state.endpoints
    assert (endpoint.url, endpoint.pending, endpoint.last_status) == (receiver.url, 0, "200")
    assert endpoint.last_error == "HTTP 500" and endpoint.last_success_at and endpoint.last_failure_at


async def test_every_url_gets_every_event(store, settings, valkey, smtp, receiver):
    async with WebhookReceiver() as other:
        settings = settings_for(
            smtp, redis_url=valkey.url, webhook_urls=(receiver.url, other.url), webhook_secret=SECRET
        )
        async with running_worker(store, settings), notifier.running(settings):
            await enqueue(store)
            [one] = await receiver.wait_for("email.delivered")
            [two] = await other.wait_for("email.delivered")
    assert one.id == two.id and one.body == two.body


async def test_a_receiver_that_never_answers_2xx_is_dropped_after_the_max_age(
    store, settings, valkey, smtp, receiver
):
    receiver.answers.extend([503] * 100)
    settings = settings_for(
        smtp,
        redis_url=valkey.url,
        webhook_urls=(receiver.url,),
        webhook_secret=SECRET,
        webhook_retry_base_delay=0.1,
        webhook_max_age=1.0,
    )
    dropped = counter("dropped")
    async with running_worker(store, settings), notifier.running(settings):
        await enqueue(store)
        await eventually(lambda: counter("dropped") == dropped + 1, what="the webhook dropped")
    attempts = receiver.of_type("email.delivered")
    assert 3 <= len(attempts) <= 6  # 0.1 s, 0.6 s, then cut at 1 s: not one more after the drop
    assert len({a.id for a in attempts}) == 1
    state = await delivery_state(store.redis, settings.webhook_urls)
    assert (state.pending, state.delivered, state.dropped) == (0, 0, 1)
    assert state.endpoints[0].pending == 0 and state.last_error == "HTTP 503"
    assert await store.redis.keys(keys.webhook("*")) == []


async def test_410_gone_drops_the_delivery_at_once(store, settings, receiver):
    receiver.answers.append(410)
    async with running_worker(store, settings), notifier.running(settings):
        await enqueue(store)
        await receiver.wait_for("email.delivered")
        state = await eventually(
            lambda: _dropped(store.redis, settings.webhook_urls), what="the delivery dropped"
        )
    assert state.pending == 0
    await asyncio.sleep(0.5)  # longer than the first retry would wait
    assert len(receiver.of_type("email.delivered")) == 1


async def _dropped(redis, urls):
    state = await delivery_state(redis, urls)
    return state if state.dropped == 1 else None


async def test_a_timeout_is_retried(store, settings, valkey, smtp, receiver):
    settings = settings_for(
        smtp,
        redis_url=valkey.url,
        webhook_urls=(receiver.url,),
        webhook_secret=SECRET,
        webhook_retry_base_delay=0.1,
        webhook_timeout=0.3,
    )
    receiver.delay = 1.0  # every answer comes too late ...
    async with running_worker(store, settings), notifier.running(settings):
        await enqueue(store)
        await eventually(lambda: len(receiver.received) >= 1, what="a first POST")
        receiver.delay = 0  # ... until the receiver is fast again
        await eventually(
            lambda: (
                any(r.answered == 200 and r.type for r in receiver.received) and len(receiver.received) >= 2
            ),
            what="a retry after the timeout",
        )
    state = await delivery_state(store.redis, settings.webhook_urls)
    assert state.failed_attempts >= 1
    assert "no answer within 0.3 s" in (state.last_error or "")


async def test_two_notifiers_never_post_one_delivery_at_once(store, settings, receiver):
    receiver.delay = 0.3
    async with running_worker(store, settings), notifier.running(settings), notifier.running(settings):
        for _ in range(5):
            await enqueue(store)
        await receiver.wait_for("email.delivered", 5)
        await asyncio.sleep(0.5)
    ids = [r.id for r in receiver.received]
    assert len(ids) == 5 == len(set(ids))


async def test_a_claim_whose_worker_died_is_taken_over_when_its_lease_ends(redis):
    outbox, queue = Outbox(redis), WebhookQueue(redis)
    await redis.rpush(keys.OUTBOX, 'msg_x {"type":"email.delivered","timestamp":"t","data":{}}')
    assert await outbox.fan_out(("http://127.0.0.1:9/hook",), alerts=False) == 1
    [held] = await queue.claim_due(10, lease=0.2)
    assert await queue.claim_due(10, lease=0.2) == []  # held: nobody else gets it
    await asyncio.sleep(0.3)  # the first worker died; its lease ends
    [taken] = await queue.claim_due(10, lease=5)
    assert (taken.delivery, taken.id, taken.attempt) == (held.delivery, "msg_x", 2)
    # The dead worker's late report does not reschedule what another holds now.
    assert await queue.record(held, "failed", retry_in=0, max_age=60, error="late") == "stale"
    assert await queue.claim_due(10, lease=5) == []
    assert await queue.record(taken, "delivered", max_age=60, status=200) == "delivered"
    assert await redis.zcard(keys.WEBHOOKS) == 0


async def test_mail_is_not_delayed_by_a_receiver_that_hangs(store, settings, receiver):
    receiver.delay = 1.5  # every POST holds its slot for 1.5 s
    async with running_worker(store, settings), notifier.running(settings):
        task_ids = [await enqueue(store) for _ in range(20)]
        for task_id in task_ids:
            await wait_for_status(store, task_id)
        # 20 webhooks through 8 slots take 3 rounds of 1.5 s; the mail did not wait for them.
        assert len(receiver.received) <= 8


async def test_nothing_is_queued_without_notifications(redis, valkey, smtp):
    # The module's settings have a webhook URL; these have none.
    plain = settings_for(smtp, redis_url=valkey.url)
    plain_store = TaskStore.from_settings(redis, plain)
    assert plain_store.outbox is None
    async with running_worker(plain_store, plain):
        await wait_for_status(plain_store, await enqueue(plain_store))
    assert await redis.llen(keys.OUTBOX) == 0


def test_the_schedule_grows_and_starts_within_ten_seconds():
    firsts = [retry_delay(1, 5.0) for _ in range(200)]
    assert max(firsts) <= 6.0 and min(firsts) >= 4.0
    means = [5.0 * step for step in SCHEDULE]
    assert means == sorted(means) and means[-1] == 3600
    assert all(retry_delay(n, 5.0) <= 3600 * 1.2 for n in range(1, 40))


def test_urls_are_shown_without_credentials_or_query():
    assert shown_url("https://user:pw@hooks.example.com:8443/in?token=abc#x") == (
        "https://hooks.example.com:8443/in"
    )


async def test_sending_paused_and_resumed_arrive_once_each_however_many_workers(
    store, settings, smtp, receiver
):
    smtp.password = "changed-by-the-provider"
    async with (
        running_worker(store, settings, smtp_recheck_interval=0.05) as one,
        running_worker(store, settings, smtp_recheck_interval=0.05) as two,
        notifier.running(settings),
    ):
        task_id = await enqueue(store)
        [paused] = await receiver.wait_for("sending.paused")
        await eventually(lambda: one.gate.paused and two.gate.paused, what="both workers paused")
        await asyncio.sleep(0.3)  # several re-checks by each worker: still one event
        smtp.password = settings.smtp_pass  # the owner fixes the account
        [resumed] = await receiver.wait_for("sending.resumed")
        await wait_for_status(store, task_id)
        await asyncio.sleep(0.3)
    assert [r.type for r in receiver.received if r.type.startswith("sending.")] == [
        "sending.paused",
        "sending.resumed",
    ]
    assert paused.payload is not None and resumed.payload is not None
    status = paused.payload["data"]
    assert status["paused"] is True and "535" in status["reason"] and status["worker"]
    assert resumed.payload["data"]["paused"] is False and resumed.payload["data"]["reason"] == ""
    assert paused.id != resumed.id


async def test_a_restart_while_paused_announces_nothing_new_and_resuming_is_announced(
    store, settings, smtp, receiver
):
    smtp.password = "changed-by-the-provider"
    async with running_worker(store, settings, smtp_recheck_interval=0.05), notifier.running(settings):
        await receiver.wait_for("sending.paused")
    async with running_worker(store, settings, smtp_recheck_interval=0.05) as worker:
        await eventually(lambda: worker.gate.paused, what="the new worker paused too")
    smtp.password = settings.smtp_pass
    async with running_worker(store, settings, smtp_recheck_interval=0.05), notifier.running(settings):
        await receiver.wait_for("sending.resumed")  # at start-up: the login works again
    assert len(receiver.of_type("sending.paused")) == 1


async def test_a_webhook_waiting_for_its_retry_is_delivered_after_a_restart(
    tmp_path, valkey, redis, smtp, receiver
):
    receiver.answers.append(500)
    env = smtp_env(
        smtp,
        REDIS_URL=valkey.url,
        WEBHOOK_URL=receiver.url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_RETRY_BASE_DELAY="3",
    )
    async with mailhub_serving(cwd=tmp_path, env=env) as first, aiohttp.ClientSession() as http:
        async with http.post(first.url + SUBMIT, json=MAIL_JSON) as answer:
            assert answer.status == 200
        [refused] = await receiver.wait_for("email.delivered")
        assert refused.answered == 500
    assert await redis.zcard(keys.WEBHOOKS) == 1  # it waits in Redis for its retry, not in memory
    async with mailhub_serving(cwd=tmp_path, env=env):
        _, delivered = await receiver.wait_for("email.delivered", 2, timeout=15)
    assert (delivered.answered, delivered.id, delivered.body) == (200, refused.id, refused.body)
    assert await redis.zcard(keys.WEBHOOKS) == 0


async def test_metrics_show_webhooks_waiting_and_by_outcome(aiohttp_client, store, valkey, smtp, receiver):
    receiver.answers.append(500)
    settings = settings_for(
        smtp,
        redis_url=valkey.url,
        webhook_urls=(receiver.url,),
        webhook_secret=SECRET,
        webhook_retry_base_delay=60,
    )
    client = await aiohttp_client(create_app(settings))
    async with running_worker(store, settings), notifier.running(settings):
        await enqueue(store)
        await receiver.wait_for("email.delivered")
        text = await eventually(lambda: _scrape(client, "mailhub_webhooks_pending 1.0"), what="1 pending")
    assert 'mailhub_webhooks_total{outcome="failed"}' in text


async def _scrape(client, wanted: str) -> str | None:
    async with client.get("/metrics") as answer:
        text = await answer.text()
    return text if wanted in text else None


async def test_webhooks_survive_a_redis_outage(tmp_path, smtp, receiver):
    valkey = EmbeddedRedis(tmp_path / "valkey", port=free_port(), persist=True)
    await asyncio.to_thread(valkey.start)
    redis = connect(valkey.url)
    settings = settings_for(
        smtp,
        redis_url=valkey.url,
        webhook_urls=(receiver.url,),
        webhook_secret=SECRET,
        webhook_retry_base_delay=0.5,
    )
    store = TaskStore.from_settings(redis, settings)
    receiver.answers.append(500)
    try:
        async with running_worker(store, settings), notifier.running(settings):
            await enqueue(store)
            [refused] = await receiver.wait_for("email.delivered")
            await asyncio.to_thread(valkey.stop)  # the retry falls due while Redis is away
            await asyncio.sleep(1.0)
            await asyncio.to_thread(valkey.start)
            _, delivered = await receiver.wait_for("email.delivered", 2, timeout=20)
            assert (delivered.id, delivered.answered) == (refused.id, 200)
            # Redis goes away while a receiver answers 200: the outcome waits for it, no POST again.
            receiver.delay = 1.0
            await enqueue(store)
            await eventually(lambda: receiver.arrivals == 3, what="a POST in flight")
            await asyncio.to_thread(valkey.stop)
            await eventually(lambda: len(receiver.received) == 3, what="its 200")
            await asyncio.sleep(0.5)
            await asyncio.to_thread(valkey.start)
            await eventually(lambda: _none_pending(redis), timeout=20, what="the 200 recorded")
            await asyncio.sleep(1.0)  # longer than the first retry would wait
        assert len(receiver.received) == 3
    finally:
        await redis.aclose()
        await asyncio.to_thread(valkey.stop)


async def _none_pending(redis) -> bool:
    with contextlib.suppress(RedisError):
        return await redis.zcard(keys.WEBHOOKS) == 0 and await redis.llen(keys.OUTBOX) == 0
    return False


async def test_an_erasure_removes_waiting_events_about_the_address(redis, store, smtp, drain):
    urls = ("http://127.0.0.1:9/one", "http://127.0.0.1:9/two")
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    await enqueue(store, EmailRequest("Ann <ann@example.com>, bob@example.com", "Hi", "text"))
    await drain()  # refused: the fault is this mail's
    await enqueue(store, EmailRequest("bob@example.com", "Hi", "text"))
    await drain()
    await Outbox(redis).fan_out(urls, alerts=True)  # 4 deliveries, Ann's failure in the digest
    await enqueue(store, EmailRequest("ann@example.com", "Again", "text"))
    await drain()  # its event waits in the outbox
    assert await forget_address(redis, "ANN@example.com") == 1 + 1 + 2
    held = [
        await _text_of(redis, key)
        async for key in redis.scan_iter()
        if not key.startswith(keys.task(""))  # task hashes are the admin erasure's to delete
    ]
    assert held and not any("ann@example.com" in text.lower() for text in held)
    state = await delivery_state(redis, urls)
    assert state.pending == 2 and [e.pending for e in state.endpoints] == [1, 1]
    assert await redis.llen(keys.DIGEST) == 0 and await redis.llen(keys.OUTBOX) == 0


async def _text_of(redis, key: str) -> str:
    """Everything `key` holds, as text (names and values)."""
    kind = await redis.type(key)
    if kind == "string":
        return str(await redis.get(key))
    if kind == "hash":
        return str(await redis.hgetall(key))
    if kind == "list":
        return str(await redis.lrange(key, 0, -1))
    if kind == "zset":
        return str(await redis.zrange(key, 0, -1))
    return str(await redis.xrange(key)) if kind == "stream" else ""


async def test_a_form_mail_is_announced_with_its_real_recipients(store, settings, receiver):
    form_mail = EmailRequest("owner@example.com", "Contact", "text", rendered=True, shown_to="…@example.com")
    async with running_worker(store, settings), notifier.running(settings):
        task_id = await enqueue(store, form_mail)
        document = await wait_for_status(store, task_id)
        [hook] = await receiver.wait_for("email.delivered")
    assert document["to"] == "…@example.com"  # what a visitor sees
    assert hook.payload is not None and hook.payload["data"]["to"] == "owner@example.com"
