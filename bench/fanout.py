"""Fan-out: 1,000 SSE subscribers on 100 tasks, on one web process.

    python -m bench.fanout [--tasks 100] [--per-task 10] [--timeout 120]

Processes (all children of this script, stopped by PID): an embedded Valkey,
`python run.py web`, and `python run.py worker` delivering to the aiosmtpd
sink of `bench.sink`, which answers 451 to each mail's first DATA, so every
task goes queued, attempt, retry, attempt, success: 5 transitions.

The mails are posted first; then every subscriber connects and gets the
queued state; only then does the worker start, so each subscriber must
receive all 5 transitions of its task. This script also subscribes to the
events channel itself: the moment it sees a publish is the reference for
the latency of the SSE clients (both clocks are this process's). Latency
from each event's own `at` (the worker's wall clock, millisecond precision)
is shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from bench.fanout_baseline import listen
from bench.sink import Sink
from bench.support import (
    MailhubServer,
    Process,
    Row,
    event_time,
    mail,
    print_table,
    run,
    sink_env,
    start_worker,
    submit_all,
    with_sink_and_valkey,
)
from mailhub.store.embedded_valkey import EmbeddedRedis
from tests.helpers import eventually
from tests.processes import rss_mib

EVENTS_PATH = "/api/v1/email/events"
EXPECTED = ["queued", "attempt", "retry", "attempt", "success"]
REFERENCE_NAME = "bench-reference"


@dataclass
class Subscriber:
    """One SSE client: what it received, when (monotonic and wall clock)."""

    task_id: str
    docs: list[dict[str, Any]] = field(default_factory=list)
    received: list[tuple[float, float]] = field(default_factory=list)
    error: str = ""

    @property
    def events(self) -> list[str]:
        return [doc["event"] for doc in self.docs]


def raise_fd_limit() -> int:
    """Allow this process (and its children) enough sockets for every subscriber."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(wanted, 65536)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def local_ports(pid: int) -> set[int]:
    """Local TCP ports of `pid`'s sockets (from /proc: no extra package)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            columns = line.split()
            if columns[9] in inodes:
                ports.add(int(columns[1].rsplit(":", 1)[1], 16))
    return ports


async def redis_connections(redis: Redis, pid: int) -> tuple[int, int]:
    """(pub/sub connections, all connections) that `pid` holds to Redis."""
    ports = local_ports(pid)
    mine = [c for c in await redis.client_list() if int(c["addr"].rsplit(":", 1)[1]) in ports]
    pubsub = [c for c in mine if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]
    return len(pubsub), len(mine)


async def reference(redis: Redis, seen: dict[tuple[str, int], float], ready: asyncio.Event) -> None:
    """Record when each (task, seq) is published, as this process sees it."""

    def record(data: str) -> None:
        doc = json.loads(data)
        seen[(doc["task_id"], doc["seq"])] = time.monotonic()

    await listen(redis, ready.set, record)


async def subscribe(
    session: aiohttp.ClientSession,
    url: str,
    subscriber: Subscriber,
    gate: asyncio.Semaphore,
    connected: list[int],
) -> None:
    """Follow one task until the server closes the stream."""
    data: list[str] = []
    try:
        async with gate:  # connect a bounded number at a time (listen backlog)
            response = await session.get(url + EVENTS_PATH, params={"task_id": subscriber.task_id})
        async with response:
            if response.status != 200:
                subscriber.error = f"HTTP {response.status}"
                return
            while raw := await response.content.readline():
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                elif line == "" and data:
                    subscriber.received.append((time.monotonic(), time.time()))
                    subscriber.docs.append(json.loads("\n".join(data)))
                    data.clear()
                    if len(subscriber.docs) == 1:
                        connected[0] += 1
    except (aiohttp.ClientError, OSError) as exc:
        subscriber.error = f"{type(exc).__name__}: {exc}"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Observed:
    """What the web process showed while the subscribers connected and the events flowed."""

    connect_seconds: float
    #: Web RSS before the subscribers, with all of them, after every stream closed (MiB).
    rss: tuple[float, float, float]
    #: Pub/sub connections of the web process with all subscribed, and after.
    pubsub: tuple[int, int]
    #: All its Redis connections with all subscribed.
    redis_peak: int


async def connect_then_deliver(
    web: MailhubServer,
    redis: Redis,
    subscribers: list[Subscriber],
    env: dict[str, str],
    tmp: Path,
    timeout: float,
) -> Observed:
    """Connect every subscriber, then start the worker, and wait until every stream has ended."""
    rss_before, connected = rss_mib(web.pid), [0]
    gate = asyncio.Semaphore(100)
    client_timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=None)
    worker: Process | None = None
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
            started = time.monotonic()
            readers = [
                asyncio.create_task(subscribe(session, web.url, s, gate, connected)) for s in subscribers
            ]
            await eventually(
                lambda: connected[0] + sum(bool(s.error) for s in subscribers) >= len(subscribers),
                timeout=30,
                what="every subscriber connected",
                interval=0.05,
            )
            connect_seconds = time.monotonic() - started
            rss_peak = rss_mib(web.pid)
            pubsub_peak, redis_peak = await redis_connections(redis, web.pid)
            worker = start_worker(env, tmp / "worker.log")
            await asyncio.wait_for(asyncio.gather(*readers), timeout)
    finally:
        if worker is not None:
            worker.stop()
    pubsub_after, _ = await redis_connections(redis, web.pid)
    rss = (rss_before, rss_peak, rss_mib(web.pid))
    return Observed(connect_seconds, rss, (pubsub_peak, pubsub_after), redis_peak)


def latencies(
    subscribers: list[Subscriber], published: dict[tuple[str, int], float]
) -> tuple[list[float], list[float]]:
    """Milliseconds from each publish (as this process saw it), and from each event's `at`, to its client."""
    live = [
        (doc, received) for s in subscribers for doc, received in zip(s.docs, s.received) if doc["seq"] > 1
    ]
    from_publish = [
        (mono - published[(doc["task_id"], doc["seq"])]) * 1000
        for doc, (mono, _wall) in live
        if (doc["task_id"], doc["seq"]) in published
    ]
    from_at = [(wall - event_time(doc)) * 1000 for doc, (_mono, wall) in live]
    return from_publish, from_at


def report(
    args: argparse.Namespace,
    subscribers: list[Subscriber],
    published: dict[tuple[str, int], float],
    seen: Observed,
) -> int:
    """Print whether every subscriber got every transition, and the table; the exit code."""
    total = len(subscribers)
    complete = [s for s in subscribers if s.events == EXPECTED and not s.error]
    every = len(complete) == total and all([d["seq"] for d in s.docs] == [1, 2, 3, 4, 5] for s in complete)
    print(
        f"\nevery subscriber received every transition: {'yes' if every else 'NO'} "
        f"({len(complete)}/{total} subscribers complete, "
        f"{sum(len(s.docs) for s in subscribers)}/{total * len(EXPECTED)} events)"
    )
    if errors := sorted({s.error for s in subscribers if s.error}):
        print("errors:", "; ".join(errors[:5]))
    from_publish, from_at = latencies(subscribers, published)
    rows = [
        Row("subscribers", total, "", goal=f"{args.tasks} tasks x {args.per_task}"),
        Row("all connected in", seen.connect_seconds, "s"),
        Row("latency publish -> SSE client, p50", statistics.median(from_publish), "ms"),
        Row("latency publish -> SSE client, p99", percentile(from_publish, 99), "ms"),
        Row("latency publish -> SSE client, max", max(from_publish), "ms"),
        Row("latency event `at` -> SSE client, p50", statistics.median(from_at), "ms"),
        Row("latency event `at` -> SSE client, p99", percentile(from_at, 99), "ms"),
        Row("web RSS before subscribers", seen.rss[0], "MiB"),
        Row("web RSS with all subscribers", seen.rss[1], "MiB"),
        Row("web RSS after all streams closed", seen.rss[2], "MiB"),
        Row("web pub/sub connections (all subscribed)", seen.pubsub[0], "", goal="1"),
        Row("web pub/sub connections (after)", seen.pubsub[1], "", goal="1"),
        Row("web Redis connections in all (all subscribed)", seen.redis_peak, ""),
    ]
    print_table(
        f"SSE fan-out: {total} subscribers on {args.tasks} tasks, one web process",
        rows,
        "python -m bench.fanout " + " ".join(sys.argv[1:]),
    )
    return 0 if every and seen.pubsub[0] == 1 else 1


def fanout_env(sink: Sink, tmp: Path, redis_url: str) -> dict[str, str]:
    """mailhub's settings for a fan-out run: quick retries, every subscriber from one address."""
    return sink_env(
        sink,
        tmp / "data",
        REDIS_URL=redis_url,
        RETRY_BASE_DELAY="0.2",
        RETRY_MAX_DELAY="0.4",
        WORKER_CONCURRENCY="64",
        MAX_STREAMS_PER_CLIENT="100000",
    )


async def measure(args: argparse.Namespace, tmp: Path, sink: Sink, valkey: EmbeddedRedis) -> int:
    env = fanout_env(sink, tmp, valkey.url)
    redis = Redis.from_url(valkey.url, decode_responses=True, client_name=REFERENCE_NAME)
    web = MailhubServer("web", env=env, log_dir=tmp)
    published: dict[tuple[str, int], float] = {}
    try:
        web.wait_ready()
        sink.handler.reset(refuse_first=True)
        listening = asyncio.Event()
        watcher = asyncio.create_task(reference(redis, published, listening))
        await asyncio.wait_for(listening.wait(), 10)
        submitted = await submit_all(web.url, [mail(n, "fanout") for n in range(args.tasks)])
        if submitted.errors or None in submitted.task_ids:
            raise RuntimeError(f"submits failed: {submitted.errors[:3]}")
        task_ids = [t for t in submitted.task_ids if t]
        subscribers = [Subscriber(task_ids[n % args.tasks]) for n in range(args.tasks * args.per_task)]
        seen = await connect_then_deliver(web, redis, subscribers, env, tmp, args.timeout)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        web.stop()
        await redis.aclose()
    return report(args, subscribers, published, seen)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--per-task", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on the delivery phase")
    args = parser.parse_args()
    print(f"open files allowed: {raise_fd_limit()}")
    return await with_sink_and_valkey(measure, args)


if __name__ == "__main__":
    run(main)
