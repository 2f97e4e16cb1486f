"""The helper processes of `bench.fanout_10k`: SSE client processes and the publish reference.

    python -m bench.fanout_clients client --spec SPEC.json --out OUT.json [--timeout 180]
    python -m bench.fanout_clients reference --redis-url URL --out OUT.json [--timeout 3600]

A client process opens one bare asyncio protocol per stream (HTTP/1.1,
`Connection: close`, no aiohttp client: far less CPU than aiohttp's), writes
`OUT.json.ready` once every stream has its first event, and `OUT.json` with
each stream's events once all have ended. The reference subscribes to the
events channel and records when each (task, seq) was published, in a process
that does nothing else; SIGTERM ends it and writes `OUT.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from bench.fanout import EVENTS_PATH, REFERENCE_NAME, raise_fd_limit, reference
from bench.support import run
from tests.helpers import eventually


class _Stream(asyncio.Protocol):
    """One SSE stream: the events' data lines and when each event was complete."""

    def __init__(self, request: bytes, first: Callable[[], None]) -> None:
        self.request = request
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first = first
        self.buffer = b""
        self.status = 0
        self.events: list[tuple[float, float, str]] = []
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP connection
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        mono, wall = time.monotonic(), time.time()
        self.buffer += data
        if not self.status:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self.buffer = rest
        # HTTP/1.1 chunked: aiohttp writes each event as one chunk, so the chunk-size
        # lines fall between events and are skipped with every line that is not data.
        *blocks, self.buffer = self.buffer.split(b"\r\n\r\n")
        for block in blocks:
            data_lines = [line[5:].lstrip() for line in block.split(b"\r\n") if line.startswith(b"data:")]
            if data_lines:
                self.events.append((mono, wall, b"\n".join(data_lines).decode()))
                if len(self.events) == 1:
                    self.first()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status != 200 and not self.error:
            self.error = f"HTTP {self.status}" if self.status else f"closed: {exc}"
        if not self.closed.done():
            self.closed.set_result(None)

    def outcome(self) -> str:
        """What went wrong with this stream ("" if nothing)."""
        if not self.error and self.events and self.status == 200 and not self.closed.done():
            return "still open at the timeout"
        return self.error


async def _follow(stream: _Stream, host: str, port: int, gate: asyncio.Semaphore) -> None:
    """Connect `stream` (a bounded number at a time) and wait until the server closes it."""
    try:
        async with gate:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.create_connection(lambda: stream, host, port), 30)
    except (TimeoutError, OSError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
        return
    await stream.closed


async def client(args: argparse.Namespace) -> None:
    """Follow every task of the spec; the files `--out`.ready (all connected) and `--out` (all done)."""
    spec = json.loads(Path(args.spec).read_text())
    connected = [0]

    def first() -> None:
        connected[0] += 1

    streams = [
        _Stream(
            f"GET {EVENTS_PATH}?task_id={task_id} HTTP/1.1\r\nHost: {spec['host']}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode(),
            first,
        )
        for task_id in spec["task_ids"]
    ]
    gate = asyncio.Semaphore(100)  # connects in flight: the server's listen backlog is 128
    started = time.monotonic()
    readers = [asyncio.create_task(_follow(s, spec["host"], spec["port"], gate)) for s in streams]
    with contextlib.suppress(TimeoutError):
        await eventually(
            lambda: connected[0] + sum(bool(s.error) for s in streams) >= len(streams),
            timeout=args.connect_timeout,
            what="connected",
            interval=0.05,
        )
    ready = {"connected": connected[0], "seconds": time.monotonic() - started}
    Path(args.out + ".ready").write_text(json.dumps(ready))
    _, pending = await asyncio.wait(readers, timeout=args.timeout)
    for reader in pending:
        reader.cancel()
    results = [
        {"task_id": task_id, "events": s.events, "error": s.outcome()}
        for task_id, s in zip(spec["task_ids"], streams)
    ]
    Path(args.out).write_text(json.dumps(results))


async def publish_reference(args: argparse.Namespace) -> None:
    """Record when each (task, seq) is published until SIGTERM or `--timeout`; write them to `--out`."""
    redis = Redis.from_url(args.redis_url, decode_responses=True, client_name=REFERENCE_NAME)
    seen: dict[tuple[str, int], float] = {}
    ready, stop = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    watcher = asyncio.create_task(reference(redis, seen, ready))
    await asyncio.wait_for(ready.wait(), 10)
    Path(args.out + ".ready").write_text("subscribed")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.timeout)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await redis.aclose()
    Path(args.out).write_text(json.dumps([[task, seq, at] for (task, seq), at in seen.items()]))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    follow = commands.add_parser("client", help="follow the streams of a spec file")
    follow.add_argument("--spec", required=True)
    follow.add_argument("--out", required=True)
    follow.add_argument("--timeout", type=float, default=180.0)
    follow.add_argument("--connect-timeout", type=float, default=90.0)
    record = commands.add_parser("reference", help="record when each event is published")
    record.add_argument("--redis-url", required=True)
    record.add_argument("--out", required=True)
    record.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    if args.command == "client":
        raise_fd_limit()
        await client(args)
    else:
        await publish_reference(args)
    return 0


if __name__ == "__main__":
    run(main)
