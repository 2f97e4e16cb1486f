"""`python run.py` under a low open-file limit: the limit raised, one client unable to take
every descriptor, and running out of descriptors logged once per burst."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import time
from collections.abc import AsyncIterator

import aiohttp

from mailhub.process import AcceptErrorLog
from mailhub.web.streams import WS_PATH
from tests.helpers import eventually
from tests.processes import MailhubProcess

MAIL = {"to": "user@example.com", "subject": "Hello", "body": "Hi"}
UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@contextlib.asynccontextmanager
async def client_at(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0, local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def timed_post(url: str, address: str) -> float:
    """Seconds a submit from `address` takes to be answered `queued`."""
    started = time.monotonic()
    async with client_at(address) as session:
        async with session.post(
            f"{url}/api/v1/email/received", json=MAIL, timeout=aiohttp.ClientTimeout(10)
        ) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["status"] == "queued"
    return time.monotonic() - started


def open_file_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        [line] = [line for line in limits if line.startswith("Max open files")]
    soft, hard = re.findall(r"\d+", line)[:2]
    return int(soft), int(hard)


async def test_the_file_limit_is_raised_to_the_hard_limit_at_start_up(tmp_path):
    with MailhubProcess(cwd=tmp_path, env={}, file_limit=(1024, 4096)) as server:
        assert open_file_limit(server.process.pid) == (4096, 4096)
        assert "open file limit raised from 1024 to 4096" in server.log


async def websocket_attempt(port: int, held: list[asyncio.StreamWriter]) -> int:
    """One WebSocket upgrade from 127.0.0.1: its status; a 101 stays open in `held`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE.format(path=WS_PATH, port=port).encode())
    status = int((await reader.readline()).split()[1])
    if status == 101:
        held.append(writer)
    else:
        await reader.read()  # a refused client's connection is closed by the server
        writer.close()
    return status


async def test_one_client_cannot_take_every_descriptor_under_a_1024_file_limit(tmp_path):
    with MailhubProcess(cwd=tmp_path, env={}, file_limit=(1024, 1024)) as server:
        assert "open file limit: 1024" in server.log
        held: list[asyncio.StreamWriter] = []
        gate = asyncio.Semaphore(200)

        async def attempt() -> int | str:
            async with gate:
                try:
                    return await asyncio.wait_for(websocket_attempt(server.port, held), 10)
                except (OSError, TimeoutError) as exc:
                    return type(exc).__name__

        try:
            attempts = [asyncio.create_task(attempt()) for _ in range(1_100)]
            await asyncio.sleep(0.2)  # the flood is under way
            during = await timed_post(server.url, "127.0.0.2")
            statuses = await asyncio.wait_for(asyncio.gather(*attempts), 15)
            after = await timed_post(server.url, "127.0.0.2")
        finally:
            for writer in held:
                writer.close()
        print(
            f"\nanother client's POST: {during * 1000:.0f} ms during the flood, {after * 1000:.0f} ms after"
        )
        assert statuses.count(101) == len(held) == 20
        assert statuses.count(429) == 1_080
        assert during < 5 and after < 5
        assert "cannot accept new connections" not in server.log


async def test_running_out_of_descriptors_is_logged_once_per_burst_and_the_server_recovers(tmp_path):
    with MailhubProcess(cwd=tmp_path, env={"KEEPALIVE_TIMEOUT": "60"}, file_limit=(64, 64)) as server:
        idle: list[asyncio.StreamWriter] = []
        try:
            for _ in range(100):  # idle connections: more than the process can hold
                with contextlib.suppress(OSError, TimeoutError):
                    idle.append(
                        (await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 1))[1]
                    )
            deadline = time.monotonic() + 5
            while "cannot accept new connections" not in server.log:
                assert time.monotonic() < deadline, server.log
                await asyncio.sleep(0.05)
            # asyncio retries every second, each retry failing once per waiting connection.
            await asyncio.sleep(2.5)
        finally:
            for writer in idle:
                writer.close()
        assert await timed_post(server.url, "127.0.0.2") < 5
    log = server.log
    assert log.count("cannot accept new connections") == 1, log
    assert "Too many open files (open file limit 64)" in log
    # asyncio's own report, a traceback each time, never reaches the log. (Other parts that
    # need a descriptor meanwhile, such as the worker's Redis connections, log their own failures.)
    assert "socket.accept() out of system resource" not in log


async def test_accept_errors_are_counted_per_window_and_other_errors_pass_on(caplog):
    loop = asyncio.get_running_loop()
    seen: list[dict] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        log = AcceptErrorLog(loop, window=0.05).install()
        with socket.socket() as listening:
            # What asyncio's _accept_connection reports when accept() hits the file limit.
            failure = {
                "message": "socket.accept() out of system resource",
                "exception": OSError(errno.EMFILE, "Too many open files"),
                "socket": listening,
            }
            for _ in range(3):
                loop.call_exception_handler(failure)
            await eventually(lambda: "2 more failed accepts" in caplog.text, what="the window's summary")
            await eventually(lambda: not log.in_burst, what="a window without errors")
            loop.call_exception_handler(failure)  # a new burst is reported at once
            other = {"message": "something else", "exception": OSError(errno.EMFILE, "elsewhere")}
            loop.call_exception_handler(other)
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "mailhub.process" and r.levelno == logging.ERROR
        ]
        assert [line.split(":")[0] for line in lines] == ["cannot accept new connections"] * 3
        assert "Too many open files" in lines[0] and "2 more failed accepts" in lines[1]
        assert "Too many open files" in lines[2]
        assert seen == [other]  # passed on to the handler that was there before
    finally:
        loop.set_exception_handler(None)
