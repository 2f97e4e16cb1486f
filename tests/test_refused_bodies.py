"""Memory of a real `python run.py` after a burst of large bodies it refuses (issue #9, finding 5)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.helpers import SUBMIT
from tests.processes import MailhubProcess, rss_mib

#: The issue's acceptance: back within this much of the RSS before the burst.
ALLOWED_GROWTH_MIB = 100
CONNECTIONS, REQUESTS = 8, 40
#: Valid JSON just under the 512 KiB request limit, refused for its `body` over 64 KiB.
INVALID = json.dumps({"to": "owner@example.com", "subject": "Hi", "body": "x" * 500_000}).encode()


async def _burst(url: str) -> dict[int, int]:
    statuses: dict[int, int] = {}
    headers = {"Content-Type": "application/json"}

    async def lane(session: aiohttp.ClientSession) -> None:
        for _ in range(REQUESTS):
            async with session.post(url + SUBMIT, data=INVALID, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(lane(session) for _ in range(CONNECTIONS)))
    return statuses


async def _settled(pid: int, *, below: float, timeout: float) -> float:
    """The RSS once it is `below` (MiB), or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        now = rss_mib(pid)
        if now <= below or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


async def test_rss_returns_near_its_start_after_a_burst_of_refused_bodies(tmp_path):
    env = {"RATE_LIMIT": "100000/hour", "LOG_LEVEL": "warning"}
    with MailhubProcess(cwd=tmp_path, env=env) as server:
        pid = server.process.pid
        before = rss_mib(pid)
        statuses = await _burst(server.url)
        after_burst = rss_mib(pid)
        assert statuses == {422: CONNECTIONS * REQUESTS}
        now = await _settled(pid, below=before + ALLOWED_GROWTH_MIB, timeout=10)
        assert now <= before + ALLOWED_GROWTH_MIB, (
            f"RSS {before:.0f} MiB before, {after_burst:.0f} right after the burst, {now:.0f} 10 s later"
        )
        assert server.stop() == 0
