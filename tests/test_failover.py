"""A Sentinel failover under load, black box: real primary, replica, Sentinel and mailhub processes.

The primary is SIGKILLed while mail is being submitted and sent. Every
submit answered 200 must be delivered, none may stay pending, and a mail may
be sent twice only if its send was in flight; submits must answer again
within 10 s of the kill. The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field

import aiohttp

from mailhub.store.redis_client import connect_sentinel
from mailhub.store.tasks import TaskStore
from tests.helpers import RESULT, SUBMIT, eventually, settings_for, smtp_env
from tests.processes import MailhubProcess
from tests.redis_servers import MASTER, replicated
from tests.smtp_server import Fault
from tests.sse import SseReader

TOTAL, SUBMITTERS, CONCURRENCY = 200, 4, 8
#: Accepted submits before the primary is killed.
KILL_AFTER = 50


@dataclass
class Load:
    """Submits with Idempotency-Keys, each sent again on 503 or a lost connection until answered 200."""

    url: str
    session: aiohttp.ClientSession
    accepted: dict[int, str] = field(default_factory=dict)
    #: (monotonic time sent, status or None for a lost connection) of every try.
    tries: list[tuple[float, int | None]] = field(default_factory=list)
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    async def submitter(self, numbers: range, deadline: float) -> None:
        for n in numbers:
            while n not in self.accepted:
                assert time.monotonic() < deadline, f"submit {n} not accepted in time"
                await self._try(n)
            if len(self.accepted) >= KILL_AFTER:
                self.enough.set()
            await asyncio.sleep(0.03)

    async def _try(self, n: int) -> None:
        mail = {"to": f"u{n}@example.com", "subject": f"failover {n}", "body": "b"}
        sent = time.monotonic()
        try:
            async with self.session.post(
                self.url + SUBMIT, json=mail, headers={"Idempotency-Key": f"failover-{n}"}
            ) as response:
                answer = await response.json()
                status = response.status
        except aiohttp.ClientError:
            status = None
        self.tries.append((sent, status))
        if status == 200:
            self.accepted[n] = answer["task_id"]
        else:
            assert status in (503, None), answer
            await asyncio.sleep(0.1)

    def outage(self, killed_at: float) -> tuple[float, float, int]:
        """Seconds from the kill to the last refused try, to the first 200 after it; refused tries."""
        refused = [sent for sent, status in self.tries if status != 200 and sent >= killed_at]
        if not refused:
            return 0.0, 0.0, 0
        back = min(sent for sent, status in self.tries if status == 200 and sent > refused[-1])
        return refused[-1] - killed_at, back - killed_at, len(refused)


async def follow(
    url: str, session: aiohttp.ClientSession, task_id: str, started: asyncio.Event
) -> list[dict]:
    """The SSE documents of one task until its stream closes; `started` is set at the first."""
    async with session.get(url + "/api/v1/email/events", params={"task_id": task_id}) as response:
        assert response.status == 200
        reader = SseReader(response)
        first = await reader.next()
        assert first is not None
        started.set()
        return [first.doc] + [message.doc for message in await reader.rest()]


async def test_a_sentinel_failover_loses_no_accepted_mail(tmp_path, smtp):
    with replicated(tmp_path, sentinel=True) as ha:
        assert ha.sentinel is not None
        env = smtp_env(
            smtp,
            REDIS_SENTINELS=f"127.0.0.1:{ha.sentinel.port}",
            REDIS_SENTINEL_MASTER=MASTER,
            WORKER_CONCURRENCY=str(CONCURRENCY),
            SMTP_TIMEOUT="15",
            CLAIM_TIMEOUT="30",
        )
        # Started together, then waited for: the start-ups overlap.
        web = MailhubProcess("web", cwd=tmp_path, env=env)
        worker = MailhubProcess("worker", cwd=tmp_path, env=env, web=False)
        with web, worker:
            async with aiohttp.ClientSession() as session:
                await _fail_over_under_load(ha, web.url, session, smtp)
        assert "event hub resubscribed; 1 clients resync" in web.log


async def _fail_over_under_load(ha, url: str, session: aiohttp.ClientSession, smtp) -> None:
    """Submit and deliver while the primary is killed; check that what was accepted arrived."""
    held, live = await _a_held_send_followed_live(url, session, smtp)
    load = Load(url, session)
    deadline = time.monotonic() + 60
    submitters = [
        asyncio.create_task(load.submitter(range(k, TOTAL, SUBMITTERS), deadline)) for k in range(SUBMITTERS)
    ]
    await asyncio.wait_for(load.enough.wait(), 30)
    ha.kill_primary()
    killed_at = time.monotonic()
    await asyncio.gather(*submitters)
    smtp.handler.release()
    documents = await asyncio.wait_for(live, 30)
    assert documents[-1]["status"] == "success", documents
    await _check_delivered(ha, smtp, {**load.accepted, -1: held}, killed_at, load)


async def _a_held_send_followed_live(
    url: str, session: aiohttp.ClientSession, smtp
) -> tuple[str, asyncio.Task[list[dict]]]:
    """One mail whose DATA the SMTP server holds until released, and an SSE client following it."""
    smtp.handler.faults.append(Fault.hold_data())
    async with session.post(url + SUBMIT, json={"to": "held@example.com", "subject": "s", "body": "b"}) as r:
        task_id = (await r.json())["task_id"]

    async def sending() -> bool:
        async with session.get(url + RESULT, params={"task_id": task_id}) as response:
            return (await response.json())["attempts"] == 1

    await eventually(sending, timeout=20, what="the held send under way")
    started = asyncio.Event()
    live = asyncio.create_task(follow(url, session, task_id, started))
    await asyncio.wait_for(started.wait(), 10)
    return task_id, live


async def _check_delivered(ha, smtp, accepted: dict[int, str], killed_at: float, load: Load) -> None:
    """Every accepted task delivered and `success`; duplicates no more than the sends in flight."""
    assert ha.sentinel is not None
    redis = connect_sentinel((("127.0.0.1", ha.sentinel.port),), MASTER)
    store = TaskStore.from_settings(redis, settings_for(smtp))
    try:

        async def delivered() -> bool:
            sent = {m.message["Message-ID"] for m in smtp.handler.messages}
            return all(any(task_id in mid for mid in sent) for task_id in accepted.values())

        await eventually(delivered, timeout=30, interval=0.1, what="every accepted mail delivered")
        statuses = collections.Counter()
        for task_id in accepted.values():
            raw = await store.result(task_id)
            statuses[json.loads(raw)["status"] if raw else "missing"] += 1
    finally:
        await redis.aclose()
    sends = collections.Counter(m.message["Message-ID"] for m in smtp.handler.messages)
    duplicates = sum(sends.values()) - len(sends)
    last_refused, back, refused = load.outage(killed_at)
    print(
        f"\nfailover: {len(accepted)} accepted, {len(sends)} delivered, {duplicates} duplicates, "
        f"statuses {dict(statuses)}; {refused} tries refused (503 or connection lost) "
        f"until {last_refused:.2f} s after the kill; first 200 after it at {back:.2f} s"
    )
    assert statuses == {"success": len(accepted)}
    assert duplicates <= CONCURRENCY
    assert back < 10
