"""Alert mails to ALERT_EMAIL, delivered by the real SMTP server: pause, resume, digests."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailhub.notify import notifier
from mailhub.settings import Settings
from mailhub.store import keys
from mailhub.store.alerts import alert_state
from mailhub.store.tasks import EmailRequest
from tests.helpers import enqueue, eventually, running_worker, settings_for, wait_for_status
from tests.smtp_server import Captured, Fault, SmtpServer

OWNER = "owner@owner.example"


@pytest.fixture
def settings(valkey, smtp) -> Settings:
    # Mail may go to example.com only: the owner's address is not on that list.
    return settings_for(
        smtp,
        redis_url=valkey.url,
        allowed_recipients=("@example.com",),
        alert_email=OWNER,
        alert_interval=1.5,
    )


def to_owner(smtp: SmtpServer) -> list[Captured]:
    with smtp.handler.lock:
        return [m for m in smtp.handler.messages if m.rcpt_tos == [OWNER]]


def text(mail: Captured) -> str:
    return mail.message.get_content()


async def test_pause_and_resume_mails_reach_the_owner_once_sending_works(store, settings, smtp):
    smtp.password = "changed-by-the-provider"
    async with (
        running_worker(store, settings, smtp_recheck_interval=0.05) as worker,
        notifier.running(settings),
    ):
        task_id = await enqueue(store)
        await eventually(lambda: worker.gate.paused, what="the gate to close")
        # The pause mail is queued at once, and waits like all mail.
        await eventually(lambda: _alert_tasks(store.redis), what="the pause mail queued")
        await asyncio.sleep(0.3)
        assert smtp.handler.messages == []
        smtp.password = settings.smtp_pass  # the owner fixes the account
        await wait_for_status(store, task_id)
        await eventually(lambda: len(to_owner(smtp)) == 2, what="two alert mails")
    paused, resumed = to_owner(smtp)
    assert paused.message["Subject"] == "mailhub: sending is paused"
    assert "535" in text(paused) and "resumes by itself" in text(paused)
    assert resumed.message["Subject"] == "mailhub: sending resumed"
    assert paused.message["From"] == "Site <noreply@example.com>"


async def _alert_tasks(redis) -> int:
    count = 0
    async for key in redis.scan_iter(match=keys.task("*")):
        count += bool(await redis.hget(key, "alert"))
    return count


async def test_a_digest_lists_failed_mail_at_most_once_per_interval(store, settings, smtp, drain):
    smtp.handler.faults.extend([Fault.reply_rcpt("550 5.1.1 no such user")] * 2)
    failed = [await enqueue(store, EmailRequest(f"u{n}@example.com", "Hi", "text")) for n in range(2)]
    await drain()  # both failed before the notifier runs: one digest lists both
    async with running_worker(store, settings), notifier.running(settings):
        [first] = await _digests(smtp, 1)
        first_at = time.monotonic()
        smtp.handler.faults.append(Fault.reply_data("554 5.7.1 rejected as spam"))
        later = await enqueue(store, EmailRequest("u9@example.com", "Hi", "text"))
        await wait_for_status(store, later)
        await asyncio.sleep(0.5)
        assert len(await _digests(smtp, 1)) == 1  # within the interval: the failure waits
        assert (await alert_state(store.redis)).failures_waiting == 1
        _, second = await _digests(smtp, 2, timeout=5)
        second_at = time.monotonic()
    assert second_at - first_at >= 1.5 - 0.2
    assert first.message["Subject"] == "mailhub: 2 failed mails"
    body = text(first)
    for n, task_id in enumerate(failed):
        assert task_id in body and f"u{n}@example.com" in body
    assert "reason: the receiving server refused the message" in body
    assert "550 5.1.1 no such user" in body  # the detail, for the owner
    assert second.message["Subject"] == "mailhub: 1 failed mail"
    assert later in text(second) and "554 5.7.1 rejected as spam" in text(second)
    assert failed[0] not in text(second)
    state = await alert_state(store.redis)
    assert (state.failures_waiting, state.notices_waiting) == (0, 0) and state.last_digest_at


async def _digests(smtp: SmtpServer, count: int, timeout: float = 10.0) -> list[Captured]:
    def digests() -> list[Captured]:
        return [m for m in to_owner(smtp) if "failed mail" in m.message["Subject"]]

    await eventually(lambda: len(digests()) >= count, timeout=timeout, what=f"{count} digests")
    return digests()


async def test_an_alert_mail_that_fails_is_not_reported_again(store, settings, smtp, drain):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    task_id = await enqueue(store, EmailRequest("u1@example.com", "Hi", "text"))
    await drain()
    # The digest about it is refused too.
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 owner mailbox full"))
    async with running_worker(store, settings), notifier.running(settings):
        await eventually(lambda: _alert_tasks(store.redis), what="the digest queued")
        await eventually(lambda: _alert_failed(store.redis), what="the digest refused")
        await asyncio.sleep(0.5)
    assert await store.redis.llen(keys.OUTBOX) == 0
    assert (await alert_state(store.redis)).failures_waiting == 0
    assert await store.redis.llen(keys.DIGEST) == 0
    assert to_owner(smtp) == [] and (await wait_for_status(store, task_id))["status"] == "failed"


async def _alert_failed(redis) -> bool:
    async for key in redis.scan_iter(match=keys.task("*")):
        if await redis.hget(key, "alert") and await redis.hget(key, "state") == "failed":
            return True
    return False
