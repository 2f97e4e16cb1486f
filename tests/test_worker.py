"""The worker against a real Valkey and a real STARTTLS + AUTH SMTP server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import replace

import pytest

from mailhub.delivery.sender import SmtpSender
from mailhub.delivery.worker import Worker, backoff_delay
from mailhub.store import keys, smtp_status
from mailhub.store.tasks import EmailRequest
from tests.helpers import (
    MAIL_TEXT,
    enqueue,
    eventually,
    result_of,
    running_worker,
    settings_for,
    wait_for_document,
    wait_for_event,
    wait_for_status,
    worker_for,
)
from tests.smtp_server import Fault, SmtpServer


async def test_success_on_first_attempt(store, drain, smtp):
    task_id = await enqueue(store)
    await drain()
    document = await result_of(store, task_id)
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
    assert text_of(message) == MAIL_TEXT


async def test_one_transient_failure_then_success(store, drain, smtp):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    task_id = await enqueue(store)
    await drain()
    document = await result_of(store, task_id)
    assert document["status"] == "success"
    assert document["attempts"] == 2
    assert len(await smtp.handler.wait_for_count(1)) == 1


async def test_three_transient_failures_fail_with_the_last_reply(store, redis, drain, smtp):
    smtp.handler.faults.extend([Fault.reply_data("451 4.7.1 try again later")] * 3)
    task_id = await enqueue(store)
    await drain()
    document = await result_of(store, task_id)
    assert document["status"] == "failed"
    assert document["attempts"] == 3
    assert document["reason"] == "temporary failure, no attempts left"
    assert await detail(redis, task_id) == "failed after 3 attempts: 451 4.7.1 try again later"
    assert smtp.handler.messages == []


@pytest.mark.parametrize(
    "fault", [Fault.reply_rcpt("550 5.1.1 no such user"), Fault.reply_data("554 5.7.1 rejected as spam")]
)
async def test_permanent_failure_fails_at_once(store, redis, drain, smtp, fault):
    smtp.handler.faults.append(fault)
    task_id = await enqueue(store)
    await drain()
    document = await result_of(store, task_id)
    assert document["status"] == "failed"
    assert document["attempts"] == 1
    assert document["reason"] == "the receiving server refused the message"
    assert fault.line in await detail(redis, task_id)


async def test_connection_dropped_before_data_is_retried(store, drain, smtp):
    smtp.handler.faults.append(Fault.drop_before_data())
    task_id = await enqueue(store)
    await drain()
    document = await result_of(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)


@pytest.mark.parametrize(
    "body", ["{0.__class__}", "{username!r} {{username}}", "{}", "%s {user}", "{username.__class__.__mro__}"]
)
async def test_only_the_username_placeholder_is_replaced(store, drain, smtp, body):
    await enqueue(
        store, EmailRequest(to="a@example.com", subject="s", body=body + " {username}", username="{0}")
    )
    await drain()
    [mail] = await smtp.handler.wait_for_count(1)
    expected = body.replace("{username}", "{0}") + " {0}"
    assert text_of(mail.message) == expected


async def test_korean_subject_and_body_arrive_unaltered(store, drain, smtp):
    subject = "안녕하세요,  홍길동 님 — 문의 접수 (re: Hello WORLD)  "
    body = "{username}님 안녕하세요!\n\n줄바꿈과 이모지 📨 도 그대로."
    await enqueue(store, EmailRequest(to="user@example.com", subject=subject, body=body, username="홍길동"))
    await drain()
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.message["Subject"] == subject
    assert text_of(mail.message) == body.replace("{username}", "홍길동")


async def test_subject_whitespace_is_sent_as_given(store, drain, smtp):
    await enqueue(store, EmailRequest(to="a@example.com", subject="  lower case  ", body="b"))
    await drain()
    [mail] = await smtp.handler.wait_for_count(1)
    # Blanks at either end go in an encoded word (parsers drop them after
    # "Subject:", servers at the end of a line): a reader gets them back.
    assert mail.message["Subject"] == "  lower case  "
    assert b"\r\nSubject: =?utf-8?b?" + base64.b64encode(b"  lower case  ") + b"?=\r\n" in mail.data


async def test_implicit_tls_server(store, redis, valkey, tls_material, trust_test_ca):
    with SmtpServer(tls_material, tls="ssl", user="u", password="p") as server:
        settings = settings_for(server, redis_url=valkey.url)
        task_id = await enqueue(store)
        async with worker_for(store, settings) as worker:
            await worker.drain(timeout=10)
        document = await result_of(store, task_id)
        assert document["status"] == "success"
        assert len(await server.handler.wait_for_count(1)) == 1


async def test_untrusted_certificate_pauses_sending_without_failing_mail(
    store, redis, valkey, tls_material, monkeypatch
):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with SmtpServer(tls_material, tls="starttls", user="u", password="p") as server:
        settings = settings_for(server, redis_url=valkey.url)
        # Queued first, so the worker's first claim takes it before its login check closes the gate.
        task_id = await enqueue(store)
        async with running_worker(store, settings, smtp_recheck_interval=0.05) as worker:
            await eventually(lambda: worker.gate.paused, what="the gate to close")
            document = await wait_for_event(store, task_id, "retry")
            status = await smtp_status.read(redis)
        assert document["status"] == "pending"
        assert document["attempts"] == 0
        assert document["last_error"] == "sending is paused"
        assert "CERTIFICATE_VERIFY_FAILED" in await detail(redis, task_id)
        assert status.paused and "CERTIFICATE_VERIFY_FAILED" in status.reason
        assert server.handler.messages == []


async def test_refused_login_pauses_the_queue_and_resumes_when_it_works(store, redis, settings, smtp):
    smtp.password = "changed-by-the-provider"
    async with running_worker(store, settings, smtp_recheck_interval=0.05) as worker:
        task_ids = [await enqueue(store) for _ in range(5)]
        await eventually(lambda: worker.gate.paused, what="the gate to close")
        await eventually(_recorded_paused(redis), what="the pause recorded")  # the gate closes first
        for task_id in task_ids:  # an attempt under way when the pause began is given back
            document = await wait_for_document(store, task_id, lambda d: d["event"] in ("queued", "retry"))
            assert (document["status"], document["attempts"]) == ("pending", 0)
        smtp.password = settings.smtp_pass  # the owner fixes the account
        results = [await wait_for_status(store, task_id) for task_id in task_ids]
    assert [(r["status"], r["attempts"]) for r in results] == [("success", 1)] * 5
    assert not (await smtp_status.read(redis)).paused
    assert len(await smtp.handler.wait_for_count(5)) == 5


async def test_mail_older_than_the_queue_age_is_failed_not_sent(store, redis, drain, smtp):
    task_id = await enqueue(store)
    await redis.hset(keys.task(task_id), "created_ts", 1)
    await drain()
    document = await result_of(store, task_id)
    assert document["status"] == "failed"
    assert document["reason"] == "not delivered within 24 h"
    assert (await detail(redis, task_id)).startswith("not delivered within 86400 s")
    assert smtp.handler.messages == []


async def test_connection_dropped_after_data_is_retried_with_the_same_message_id(store, drain, smtp):
    smtp.handler.faults.append(Fault.drop_after_data())
    task_id = await enqueue(store)
    await drain()
    document = await result_of(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)
    [ambiguous] = await smtp.handler.wait_for_count(1, dropped=True)
    [delivered] = await smtp.handler.wait_for_count(1)
    assert ambiguous.message["Message-ID"] == delivered.message["Message-ID"]


async def test_a_waiting_retry_does_not_hold_a_send_slot(store, settings, smtp):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    slow_retries = {"retry_base_delay": 30.0, "retry_max_delay": 30.0, "worker_concurrency": 1}
    async with running_worker(store, settings, **slow_retries):
        first = await enqueue(store)
        retrying = await wait_for_event(store, first, "retry")
        second = await enqueue(store)
        assert (await wait_for_status(store, second))["status"] == "success"
    assert retrying["last_error"] == "temporary failure, retrying"
    assert retrying["next_attempt_at"]
    assert (await result_of(store, first))["event"] == "retry"


async def test_attempts_survive_a_worker_restart(store, settings, smtp, drain):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    async with running_worker(store, settings, retry_base_delay=0.5, retry_max_delay=0.5):
        task_id = await enqueue(store)
        await wait_for_event(store, task_id, "retry")
    await drain()
    document = await result_of(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)


async def test_entry_held_by_a_dead_worker_is_reclaimed(store, redis, drain, smtp):
    await store.queue.ensure_group()
    task_id = await enqueue(store)
    # A worker that claims the entry, counts the attempt, and dies before sending.
    [entry] = await store.queue.read_new("dead-worker", 1, block=None)
    assert entry.task_id == task_id
    assert await store.begin_attempt(entry) is not None
    await drain(claim_timeout=0.2)
    document = await result_of(store, task_id)
    assert (document["status"], document["attempts"]) == ("success", 2)
    assert await redis.xpending(keys.QUEUE, keys.WORKERS_GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_interrupted_last_attempt_fails_instead_of_looping(store, redis, settings, drain, caplog):
    task_id = await enqueue(store)
    await redis.hset(keys.task(task_id), "attempts", settings.max_attempts)
    await drain()
    document = await result_of(store, task_id)
    assert document["status"] == "failed"
    assert document["attempts"] == settings.max_attempts
    assert document["reason"] == "the last attempt was interrupted"
    assert "interrupted" in await detail(redis, task_id)
    assert any(task_id in r.getMessage() and "interrupted" in r.getMessage() for r in caplog.records)


async def test_transitions_carry_increasing_seq_and_terminal_state_expires(store, redis, drain):
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.EVENTS)
    task_id = await enqueue(store)
    await drain()
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
    await store.queue.ensure_group()
    task_id = await enqueue(store)
    [entry] = await store.queue.read_new("w", 1, block=None)
    attempt = await store.begin_attempt(entry)
    await store.succeed(replace(attempt, number=attempt.number + 5))
    assert (await result_of(store, task_id))["status"] == "pending"


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
    worker = Worker.from_settings(store, sender, settings, poll_interval=0.01)
    await worker.start()
    task_id = await enqueue(store)
    await asyncio.wait_for(sender.entered.wait(), 10)
    return worker, sender, task_id


async def test_shutdown_lets_a_send_in_flight_finish_and_claims_nothing_new(store, settings, smtp, caplog):
    caplog.set_level(logging.INFO, logger="mailhub.delivery.worker")
    worker, sender, in_flight = await _send_in_flight(store, settings)
    stopping = asyncio.create_task(worker.stop())
    # Logged once claiming has stopped, before waiting for the sends in flight.
    await eventually(lambda: "waiting for 1 sends" in caplog.text, what="claiming to stop")
    waiting = await enqueue(store)
    sender.gate.set()
    await asyncio.wait_for(stopping, 15)
    await sender.real.close()
    assert (await result_of(store, in_flight))["status"] == "success"
    assert (await result_of(store, waiting))["event"] == "queued"
    assert len(await smtp.handler.wait_for_count(1)) == 1


async def test_a_send_outliving_the_grace_period_keeps_its_queue_entry(store, redis, settings):
    worker, sender, task_id = await _send_in_flight(store, replace(settings, shutdown_grace=0.05))
    await asyncio.wait_for(worker.stop(), 10)
    await sender.real.close()
    document = await result_of(store, task_id)
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


def _recorded_paused(redis):
    async def paused() -> bool:
        status = await smtp_status.read(redis)
        return status is not None and status.paused

    return paused


async def test_consumers_of_gone_workers_are_forgotten(store, redis):
    queue = store.queue
    await queue.ensure_group()
    await enqueue(store)
    assert await queue.read_new("busy-worker", 1, block=None)  # it holds the entry
    assert not await queue.read_new("gone-worker", 1, block=None)
    assert not await queue.read_new("me", 1, block=None)
    assert await queue.forget_idle_consumers(0, keep="me") == 1
    names = {c["name"] for c in await redis.xinfo_consumers(keys.QUEUE, keys.WORKERS_GROUP)}
    assert names == {"busy-worker", "me"}


@pytest.mark.parametrize(
    "request_",
    [
        EmailRequest(to="user@example.com", subject="Hello\u2028Bcc: victim@evil.com", body="b"),
        EmailRequest(to="user@example.com", subject="Hello\x85Bcc: victim@evil.com", body="b"),
        EmailRequest(to="user@example.com", subject="=?utf-8?q?hi=0D=0ABcc:_victim@evil.com?=", body="b"),
        EmailRequest(to="=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org", subject="Hello", body="b"),
        EmailRequest(to="victim%evil.com@example.org", subject="Hello", body="b"),
    ],
    ids=["u2028", "nel", "encoded-word-subject", "encoded-word-to", "percent-hack"],
)
async def test_a_mail_that_cannot_be_built_fails_at_the_first_attempt(store, redis, drain, smtp, request_):
    # Queued past the API's validator, as a task from an older version would be.
    task_id = await enqueue(store, request_)
    await drain()
    document = await result_of(store, task_id)
    assert (document["status"], document["attempts"]) == ("failed", 1)
    assert document["reason"] == "the message was not sent: a header value is not allowed"
    assert (await detail(redis, task_id)).startswith("failed after 1 attempt: the mail cannot be built: ")
    assert (await redis.xpending(keys.QUEUE, keys.WORKERS_GROUP))["pending"] == 0
    assert smtp.handler.messages == []
