"""The worker against a real Valkey and a real STARTTLS + AUTH SMTP server."""

from __future__ import annotations

import asyncio
import json

import pytest

from mailhub.delivery import smtp_status
from mailhub.delivery.sender import SmtpSender
from mailhub.delivery.worker import Worker, backoff_delay
from mailhub.store import keys
from mailhub.store.tasks import EmailRequest, QueueEntry
from tests.conftest import running_worker, settings_for, wait_for_result
from tests.smtp_server import Fault, SmtpServer

REQUEST = EmailRequest(to="user@example.com", subject="Hello", body="Hi {username}!", username="Kim")


async def test_success_on_first_attempt(store, worker, smtp):
    task_id = await store.enqueue(REQUEST)
    document = await wait_for_result(store, task_id)
    assert document["status"] == "success"
    assert document["attempts"] == 1
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.rcpt_tos == ["user@example.com"]
    assert mail.mail_from == "noreply@example.com"
    message = mail.message
    assert message["From"] == "Site <noreply@example.com>"
    assert message["To"] == "user@example.com"
    assert message["Subject"] == "Hello"
    assert message["Date"]
    assert task_id in message["Message-ID"]
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert text_of(message) == "Hi Kim!"


async def test_one_transient_failure_then_success(store, worker, smtp):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    task_id = await store.enqueue(REQUEST)
    document = await wait_for_result(store, task_id)
    assert document["status"] == "success"
    assert document["attempts"] == 2
    assert len(await smtp.handler.wait_for_count(1)) == 1


async def test_three_transient_failures_fail_with_the_last_reply(store, redis, worker, smtp):
    smtp.handler.faults.extend([Fault.reply_data("451 4.7.1 try again later")] * 3)
    task_id = await store.enqueue(REQUEST)
    document = await wait_for_result(store, task_id)
    assert document["status"] == "failed"
    assert document["attempts"] == 3
    assert document["reason"] == "temporary failure, no attempts left"
    assert await detail(redis, task_id) == "failed after 3 attempts: 451 4.7.1 try again later"
    assert smtp.handler.messages == []


@pytest.mark.parametrize(
    "fault", [Fault.reply_rcpt("550 5.1.1 no such user"), Fault.reply_data("554 5.7.1 rejected as spam")]
)
async def test_permanent_failure_fails_at_once(store, redis, worker, smtp, fault):
    smtp.handler.faults.append(fault)
    task_id = await store.enqueue(REQUEST)
    document = await wait_for_result(store, task_id)
    assert document["status"] == "failed"
    assert document["attempts"] == 1
    assert document["reason"] == "the receiving server refused the message"
    assert fault.line in await detail(redis, task_id)


async def test_connection_dropped_before_data_is_retried(store, worker, smtp):
    smtp.handler.faults.append(Fault.drop_before_data())
    task_id = await store.enqueue(REQUEST)
    document = await wait_for_result(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)


@pytest.mark.parametrize(
    "body", ["{0.__class__}", "{username!r} {{username}}", "{}", "%s {user}", "{username.__class__.__mro__}"]
)
async def test_only_the_username_placeholder_is_replaced(store, worker, smtp, body):
    task_id = await store.enqueue(
        EmailRequest(to="a@example.com", subject="s", body=body + " {username}", username="{0}")
    )
    await wait_for_result(store, task_id)
    [mail] = await smtp.handler.wait_for_count(1)
    expected = body.replace("{username}", "{0}") + " {0}"
    assert text_of(mail.message) == expected


async def test_korean_subject_and_body_arrive_unaltered(store, worker, smtp):
    subject = "안녕하세요,  홍길동 님 — 문의 접수 (re: Hello WORLD)  "
    body = "{username}님 안녕하세요!\n\n줄바꿈과 이모지 📨 도 그대로."
    task_id = await store.enqueue(
        EmailRequest(to="user@example.com", subject=subject, body=body, username="홍길동")
    )
    await wait_for_result(store, task_id)
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.message["Subject"] == subject
    assert text_of(mail.message) == body.replace("{username}", "홍길동")


async def test_subject_whitespace_is_sent_as_given(store, worker, smtp):
    task_id = await store.enqueue(EmailRequest(to="a@example.com", subject="  lower case  ", body="b"))
    await wait_for_result(store, task_id)
    [mail] = await smtp.handler.wait_for_count(1)
    # Parsers drop the blanks after "Subject:", so look at the wire.
    assert b"\r\nSubject:   lower case  \r\n" in mail.data


async def test_implicit_tls_server(store, redis, valkey, tls_material, trust_test_ca):
    with SmtpServer(tls_material, tls="ssl", user="u", password="p") as server:
        settings = settings_for(server, redis_url=valkey.url)
        async with running_worker(store, settings):
            task_id = await store.enqueue(REQUEST)
            document = await wait_for_result(store, task_id)
        assert document["status"] == "success"
        assert len(await server.handler.wait_for_count(1)) == 1


async def test_untrusted_certificate_pauses_sending_without_failing_mail(
    store, redis, valkey, tls_material, monkeypatch
):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with SmtpServer(tls_material, tls="starttls", user="u", password="p") as server:
        settings = settings_for(server, redis_url=valkey.url)
        async with running_worker(store, settings, recheck_interval=0.05) as worker:
            task_id = await store.enqueue(REQUEST)
            await _wait_until(lambda: worker.gate.paused)
            document = json.loads(await _wait_event(store, task_id, "retry"))
            status = await smtp_status.read(redis)
        assert document["status"] == "pending"
        assert document["attempts"] == 0
        assert document["last_error"] == "sending is paused"
        assert "CERTIFICATE_VERIFY_FAILED" in await detail(redis, task_id)
        assert status.paused and "CERTIFICATE_VERIFY_FAILED" in status.reason
        assert server.handler.messages == []


async def test_refused_login_pauses_the_queue_and_resumes_when_it_works(store, redis, settings, smtp):
    smtp.password = "changed-by-the-provider"
    async with running_worker(store, settings, recheck_interval=0.05) as worker:
        task_ids = [await store.enqueue(REQUEST) for _ in range(5)]
        await _wait_until(lambda: worker.gate.paused)
        await _wait_recorded_paused(redis)  # the gate closes first, then writes why
        for task_id in task_ids:  # an attempt under way when the pause began is given back
            document = await _wait_for(store, task_id, lambda d: d["event"] in ("queued", "retry"))
            assert (document["status"], document["attempts"]) == ("pending", 0)
        smtp.password = settings.smtp_pass  # the owner fixes the account
        results = [await wait_for_result(store, task_id) for task_id in task_ids]
    assert [(r["status"], r["attempts"]) for r in results] == [("success", 1)] * 5
    assert not (await smtp_status.read(redis)).paused
    assert len(await smtp.handler.wait_for_count(5)) == 5


async def test_mail_older_than_the_queue_age_is_failed_not_sent(store, redis, settings, smtp):
    task_id = await store.enqueue(REQUEST)
    await redis.hset(keys.task(task_id), "created_ts", 1)
    async with running_worker(store, settings):
        document = await wait_for_result(store, task_id)
    assert document["status"] == "failed"
    assert document["reason"] == "not delivered within 24 h"
    assert (await detail(redis, task_id)).startswith("not delivered within 86400 s")
    assert smtp.handler.messages == []


async def test_connection_dropped_after_data_is_retried_with_the_same_message_id(store, worker, smtp):
    smtp.handler.faults.append(Fault.drop_after_data())
    task_id = await store.enqueue(REQUEST)
    document = await wait_for_result(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)
    [ambiguous] = await smtp.handler.wait_for_count(1, dropped=True)
    [delivered] = await smtp.handler.wait_for_count(1)
    assert ambiguous.message["Message-ID"] == delivered.message["Message-ID"]


async def test_a_waiting_retry_does_not_hold_a_send_slot(store, settings, smtp):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    slow_retries = settings_for(
        smtp, redis_url=settings.redis_url, retry_base_delay=30.0, retry_max_delay=30.0
    )
    async with running_worker(store, slow_retries, concurrency=1):
        first = await store.enqueue(REQUEST)
        await wait_for_result(store, first, statuses=("pending",))
        retrying = json.loads(await _wait_event(store, first, "retry"))
        second = await store.enqueue(REQUEST)
        assert (await wait_for_result(store, second))["status"] == "success"
    assert retrying["last_error"] == "temporary failure, retrying"
    assert retrying["next_attempt_at"]
    assert json.loads(await store.result(first))["event"] == "retry"


async def test_attempts_survive_a_worker_restart(store, settings, smtp):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    slow = settings_for(smtp, redis_url=settings.redis_url, retry_base_delay=0.5, retry_max_delay=0.5)
    async with running_worker(store, slow):
        task_id = await store.enqueue(REQUEST)
        await _wait_event(store, task_id, "retry")
    async with running_worker(store, settings):
        document = await wait_for_result(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)


async def test_entry_held_by_a_dead_worker_is_reclaimed(store, redis, settings, smtp):
    await store.ensure_group()
    task_id = await store.enqueue(REQUEST)
    # A worker that claims the entry, counts the attempt, and dies before sending.
    reply = await redis.xreadgroup(keys.WORKERS_GROUP, "dead-worker", {keys.QUEUE: ">"}, count=1)
    entry_id = reply[0][1][0][0]
    assert await store.begin_attempt(QueueEntry(entry_id, task_id)) is not None
    async with running_worker(store, settings, claim_timeout=0.2):
        document = await wait_for_result(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)
    assert await redis.xpending(keys.QUEUE, keys.WORKERS_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_interrupted_last_attempt_fails_instead_of_looping(store, redis, settings, caplog):
    await store.ensure_group()
    task_id = await store.enqueue(REQUEST)
    await redis.hset(keys.task(task_id), "attempts", settings.max_attempts)
    async with running_worker(store, settings):
        document = await wait_for_result(store, task_id)
    assert document["status"] == "failed"
    assert document["attempts"] == settings.max_attempts
    assert document["reason"] == "the last attempt was interrupted"
    assert "interrupted" in await detail(redis, task_id)
    assert any(task_id in r.getMessage() and "interrupted" in r.getMessage() for r in caplog.records)


async def test_transitions_carry_increasing_seq_and_terminal_state_expires(store, redis, worker):
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.EVENTS)
    task_id = await store.enqueue(REQUEST)
    await wait_for_result(store, task_id)
    events = []
    deadline = asyncio.get_running_loop().time() + 5.0
    while len(events) < 3 and asyncio.get_running_loop().time() < deadline:
        # None also stands for the skipped subscribe confirmation: keep reading.
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            events.append(json.loads(message["data"]))
    await pubsub.aclose()
    assert [(e["event"], e["seq"]) for e in events] == [("queued", 1), ("attempt", 2), ("success", 3)]
    assert [e["status"] for e in events] == ["pending", "pending", "success"]
    ttl = await redis.ttl(keys.task(task_id))
    assert 0 < ttl <= 7 * 24 * 3600


async def test_outcome_of_a_stale_attempt_is_ignored(store, redis):
    await store.ensure_group()
    task_id = await store.enqueue(REQUEST)
    entry_id = (await redis.xreadgroup(keys.WORKERS_GROUP, "w", {keys.QUEUE: ">"}))[0][1][0][0]
    attempt = await store.begin_attempt(QueueEntry(entry_id, task_id))
    stale = type(attempt)(**{**attempt.__dict__, "number": attempt.number + 5})
    await store.succeed(stale)
    assert json.loads(await store.result(task_id))["status"] == "pending"


class GatedSender:
    """The real sender, held at a gate the test opens: a send in flight, on demand."""

    def __init__(self, real) -> None:
        self.real = real
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def send(self, attempt) -> None:
        self.entered.set()
        await self.gate.wait()
        await self.real.send(attempt)

    async def verify(self) -> None:
        await self.real.verify()


async def _send_in_flight(store, settings) -> tuple[Worker, GatedSender, str]:
    """A started worker whose one send is held at the gate; returns the task id too."""
    sender = GatedSender(SmtpSender(settings))
    worker = Worker(store, sender, poll_interval=0.01)
    await worker.start()
    task_id = await store.enqueue(REQUEST)
    await asyncio.wait_for(sender.entered.wait(), 10)
    return worker, sender, task_id


async def test_shutdown_lets_a_send_in_flight_finish_and_claims_nothing_new(store, settings, smtp):
    worker, sender, in_flight = await _send_in_flight(store, settings)
    stopping = asyncio.create_task(worker.stop(grace=10))
    await _wait_until(lambda: all(loop.done() for loop in worker._loops))
    waiting = await store.enqueue(REQUEST)
    sender.gate.set()
    await asyncio.wait_for(stopping, 15)
    await sender.real.close()
    assert json.loads(await store.result(in_flight))["status"] == "success"
    assert json.loads(await store.result(waiting))["event"] == "queued"
    assert len(await smtp.handler.wait_for_count(1)) == 1


async def test_a_send_outliving_the_grace_period_keeps_its_queue_entry(store, redis, settings):
    worker, sender, task_id = await _send_in_flight(store, settings)
    await asyncio.wait_for(worker.stop(grace=0.05), 10)
    await sender.real.close()
    document = json.loads(await store.result(task_id))
    assert (document["status"], document["attempts"]) == ("pending", 1)
    assert (await redis.xpending(keys.QUEUE, keys.WORKERS_GROUP))["pending"] == 1


async def detail(redis, task_id: str) -> str:
    """The full text of the task's last failure, kept in its hash for the owner."""
    return await redis.hget(keys.task(task_id), "detail")


def text_of(message) -> str:
    """The plain-text body as sent, with SMTP's CRLF line ends back to LF."""
    return message.get_content().replace("\r\n", "\n").rstrip("\n")


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    for attempt, full in [(1, 2.0), (2, 4.0), (3, 8.0)]:
        delays = [backoff_delay(attempt, 2.0, 600.0) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1
    assert backoff_delay(30, 2.0, 600.0) <= 600.0


async def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def _wait_recorded_paused(redis, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not ((status := await smtp_status.read(redis)) and status.paused):
        assert asyncio.get_running_loop().time() < deadline, f"status still {status}"
        await asyncio.sleep(0.005)


async def _wait_for(store, task_id: str, predicate, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        document = json.loads(await store.result(task_id))
        if predicate(document):
            return document
        assert asyncio.get_running_loop().time() < deadline, f"still {document}"
        await asyncio.sleep(0.005)


async def _wait_event(store, task_id: str, event: str, timeout: float = 10.0) -> str:
    async def poll() -> str:
        while True:
            raw = await store.result(task_id)
            if raw and json.loads(raw)["event"] == event:
                return raw
            await asyncio.sleep(0.005)

    return await asyncio.wait_for(poll(), timeout)


async def test_consumers_of_gone_workers_are_forgotten(store, redis):
    await store.ensure_group()
    await store.enqueue(REQUEST)
    reply = await redis.xreadgroup(keys.WORKERS_GROUP, "busy-worker", {keys.QUEUE: ">"}, count=1)
    await redis.xreadgroup(keys.WORKERS_GROUP, "gone-worker", {keys.QUEUE: ">"}, count=1)
    await redis.xreadgroup(keys.WORKERS_GROUP, "me", {keys.QUEUE: ">"}, count=1)
    assert reply  # busy-worker holds the entry
    assert await store.forget_idle_consumers(0, keep="me") == 1
    names = {c["name"] for c in await redis.xinfo_consumers(keys.QUEUE, keys.WORKERS_GROUP)}
    assert names == {"busy-worker", "me"}
