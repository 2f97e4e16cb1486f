"""How long a client may take, on a real server with raw sockets: slow headers, idle keep-alive, slow body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from mailhub.settings import Settings
from tests.live_server import Live, serving

TIMEOUT = 0.5


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(replace(settings, keepalive_timeout=TIMEOUT, body_timeout=TIMEOUT)) as server:
        yield server


@contextlib.asynccontextmanager
async def connection(live: Live) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    port = int(live.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def trickle_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, limit: float
) -> tuple[bytes, float]:
    """Send `line` every 0.1 s, as a slowloris client does, until the server closes the
    connection; what the server sent, and how long it took, which must be under `limit`."""
    started = time.monotonic()
    closed = asyncio.create_task(read_until_closed(reader))
    while not closed.done():
        assert time.monotonic() - started < limit, "the server kept a trickling connection open"
        writer.write(line)
        await asyncio.wait([closed], timeout=0.1)
    return closed.result(), time.monotonic() - started


async def test_a_connection_that_trickles_its_headers_is_closed_within_the_header_timeout(live):
    async with connection(live) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer, elapsed = await trickle_until_closed(reader, writer, b"X-Slow: 1\r\n", limit=TIMEOUT + 3)
    assert answer == b""  # closed, never answered
    assert elapsed >= TIMEOUT * 0.8


async def test_a_connection_that_sends_nothing_is_closed_within_the_header_timeout(live):
    async with connection(live) as (reader, _):
        started = time.monotonic()
        assert await asyncio.wait_for(read_until_closed(reader), TIMEOUT + 3) == b""
    assert time.monotonic() - started >= TIMEOUT * 0.8


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(live):
    async with connection(live) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" not in head.lower()
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
        )
        await reader.readexactly(length)
        answered = time.monotonic()
        assert await asyncio.wait_for(read_until_closed(reader), TIMEOUT + 3) == b""
    assert time.monotonic() - answered >= TIMEOUT * 0.8


class _Recorder(asyncio.Protocol):
    """Keeps every byte the server sent, even when the close arrives as a reset.

    A server that closes with unread bytes from the client (the trickle) sends
    a TCP reset; a StreamReader then raises and drops the answer it had buffered.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


async def test_a_body_that_trickles_gets_408_and_the_connection_closes(live):
    body = json.dumps({"to": "user@example.com", "subject": "Hi", "body": "x" * 200}).encode()
    port = int(live.url.rsplit(":", 1)[1])
    transport, recorder = await asyncio.get_running_loop().create_connection(_Recorder, "127.0.0.1", port)
    try:
        transport.write(
            b"POST /api/v1/email/received HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body[:10])
        )
        started = time.monotonic()
        while not recorder.closed.done():
            assert time.monotonic() - started < TIMEOUT + 3, "the server kept a trickling connection open"
            transport.write(b"x")
            await asyncio.wait([recorder.closed], timeout=0.1)
        elapsed = time.monotonic() - started
    finally:
        transport.close()
    head, _, document = bytes(recorder.received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(document)["error"]["code"] == "request_timeout"
    assert elapsed >= TIMEOUT * 0.8


async def test_a_body_that_arrives_in_time_is_served(live):
    body = json.dumps({"to": "user@example.com", "subject": "Hi", "body": "hello"}).encode()
    async with connection(live) as (reader, writer):
        writer.write(
            b"POST /api/v1/email/received HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body[:10])
        )
        await asyncio.sleep(TIMEOUT / 5)  # a little late, well within the deadline
        writer.write(body[10:])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
