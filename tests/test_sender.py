"""The sender against the real STARTTLS + AUTH server: its pooled connections (reused,
recycled, replaced after trouble, closed) and the failure each refusal raises.

Every connection logs in exactly once, so the server's `auth_successes`
counts the connections the pool opened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from mailhub.delivery.sender import SmtpSender
from mailhub.errors import ConfigurationFailure, PermanentFailure, TransientFailure
from mailhub.settings import Settings
from mailhub.store.tasks import Attempt
from tests.helpers import eventually
from tests.smtp_server import Fault


def attempt(n: int) -> Attempt:
    return Attempt(
        entry_id=f"{n}-0",
        task_id=f"task-{n}",
        to="user@example.com",
        subject=f"mail {n}",
        body="Hi {username}",
        username="Kim",
        message_id=f"<task-{n}@example.com>",
        number=1,
    )


@pytest.fixture
async def sender(settings: Settings) -> AsyncIterator[SmtpSender]:
    async with pooled(settings, size=1) as pooled_sender:
        yield pooled_sender


class pooled:
    """A sender with a pool of `size`, closed on exit."""

    def __init__(self, settings: Settings, *, size: int, **options: Any) -> None:
        self.sender = SmtpSender(replace(settings, smtp_pool_size=size), **options)

    async def __aenter__(self) -> SmtpSender:
        return self.sender

    async def __aexit__(self, *exc_info: object) -> None:
        await self.sender.close()


async def test_connections_are_reused_across_mails(settings, smtp):
    async with pooled(settings, size=2) as sender:
        for n in range(5):
            await sender.send(attempt(n))
        await asyncio.gather(*(sender.send(attempt(n)) for n in range(5, 25)))
        assert sender.pool.opened == smtp.auth_successes <= 2
    mails = await smtp.handler.wait_for_count(25)
    assert sorted(m.message["Subject"] for m in mails) == sorted(f"mail {n}" for n in range(25))


@pytest.mark.parametrize(
    ("fault", "failure"),
    [
        (Fault.reply_data("451 4.7.1 try again later"), TransientFailure),
        (Fault.reply_data("554 5.7.1 rejected as spam"), PermanentFailure),
        (Fault.reply_rcpt("550 5.1.1 no such user"), PermanentFailure),
        (Fault.reply_rcpt("450 4.2.0 mailbox busy"), TransientFailure),
    ],
)
async def test_a_refused_mail_does_not_break_the_next_on_the_same_connection(sender, smtp, fault, failure):
    await sender.send(attempt(1))
    smtp.handler.faults.append(fault)
    with pytest.raises(failure, match=fault.line.split()[0]):
        await sender.send(attempt(2))
    await sender.send(attempt(3))
    mails = await smtp.handler.wait_for_count(2)
    assert [m.message["Subject"] for m in mails] == ["mail 1", "mail 3"]
    assert smtp.auth_successes == 1


@pytest.mark.parametrize("fault", [Fault.drop_before_data(), Fault.drop_after_data()])
async def test_a_dropped_connection_is_replaced(sender, smtp, fault):
    await sender.send(attempt(1))
    smtp.handler.faults.append(fault)
    with pytest.raises(TransientFailure, match="connection lost"):
        await sender.send(attempt(2))
    await sender.send(attempt(3))
    mails = await smtp.handler.wait_for_count(2)
    assert [m.message["Subject"] for m in mails] == ["mail 1", "mail 3"]
    assert smtp.auth_successes == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used(settings, smtp):
    async with pooled(settings, size=1) as sender:
        sender.pool.probe_after = 0.0  # also covers the race where the close is not yet seen
        await sender.send(attempt(1))
        smtp.drop_connections()
        await sender.send(attempt(2))
    assert len(await smtp.handler.wait_for_count(2)) == 2
    assert smtp.auth_successes == 2


async def test_a_connection_is_recycled_after_max_messages(settings, smtp):
    async with pooled(settings, size=1, max_messages=3) as sender:
        for n in range(7):
            await sender.send(attempt(n))
        assert smtp.auth_successes == 3
        # The retired connections said QUIT: only the current one stays open.
        await eventually(lambda: smtp.open_sessions == 1, what="the retired connections to close")
    assert len(await smtp.handler.wait_for_count(7)) == 7


async def test_an_idle_connection_is_closed_after_the_idle_timeout(settings, smtp):
    async with pooled(settings, size=1, idle_timeout=0.2) as sender:
        await sender.send(attempt(1))
        assert sender.pool.idle == 1
        await eventually(lambda: sender.pool.idle == 0 and smtp.open_sessions == 0, what="the idle close")
        await sender.send(attempt(2))
    assert smtp.auth_successes == 2


async def test_close_quits_every_connection(settings, smtp):
    async with pooled(settings, size=3) as sender:
        await asyncio.gather(*(sender.send(attempt(n)) for n in range(6)))
        assert smtp.open_sessions == sender.pool.opened
    await eventually(lambda: smtp.open_sessions == 0, what="every connection to close")
    with pytest.raises(TransientFailure, match="closed"):
        await sender.send(attempt(7))


async def test_a_login_failure_leaves_nothing_behind(settings, smtp):
    async with pooled(replace(settings, smtp_pass="wrong"), size=1) as sender:
        for n in range(2):
            with pytest.raises(ConfigurationFailure, match="login refused"):
                await sender.send(attempt(n))
        assert (sender.pool.idle, sender.pool.busy) == (0, 0)
    assert smtp.auth_successes == 0


async def test_waiting_for_a_busy_pool_is_bounded_by_the_smtp_timeout(settings, smtp):
    async with pooled(settings, size=1) as sender:
        smtp.handler.faults.append(Fault.hold_data())
        holding = asyncio.create_task(sender.send(attempt(1)))  # the only connection, busy
        await eventually(lambda: sender.pool.busy == 1, what="the first send to start")
        sender.pool.send_timeout = 0.3
        with pytest.raises(TransientFailure, match=r"stayed busy for 0\.3s"):
            await sender.send(attempt(2))
        sender.pool.send_timeout = settings.smtp_timeout
        smtp.handler.release()
        await holding
        await sender.send(attempt(3))
    subjects = [m.message["Subject"] for m in await smtp.handler.wait_for_count(2)]
    assert subjects == ["mail 1", "mail 3"]
