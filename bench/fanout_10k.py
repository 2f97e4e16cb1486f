"""Fan-out at 10,000: SSE subscribers read by several client processes, against a bare baseline.

    python -m bench.fanout_10k [--tasks 100] [--per-task 100] [--clients 4] [--profile DIR]

One Python process cannot connect and read 10,000 streams in time (run
`python -m bench.fanout --tasks 100 --per-task 100`: its connect phase times
out), so here the subscribers are split over `--clients` client processes
(`python -m bench.fanout_10k client ...`), each a bare asyncio protocol per
stream (HTTP/1.1, `Connection: close`, no aiohttp client), which costs far
less CPU than aiohttp's client and so disturbs the server less on this
2-core machine.

The same run measures two servers in turn, on one embedded Valkey, one
`python run.py worker` per phase and the sink of `bench.sink` answering 451
once per mail (5 transitions per task, as in `bench.fanout`):

- baseline: `bench.fanout_baseline`, a bare aiohttp handler per stream fed by
  one Redis subscription (the floor for an aiohttp fan-out server here);
- mailhub: `python run.py web`.

Each phase queues `--tasks` fresh tasks (through `TaskStore.accept`),
connects every subscriber (each gets the queued state), measures the idle
server, then starts the worker and waits for every stream to end. Latency is
from the moment this script's own subscription to the events channel sees a
publish (the reference, as in `bench.fanout`, here in a process of its own:
`python -m bench.fanout_10k reference ...`) to the moment a client process
reads the event (both `time.monotonic()`, one clock for all processes on
Linux). With `--profile DIR`, py-spy samples mailhub's web process while the
events flow (and while it idles with every subscriber connected) and the top
frames are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.fanout import (
    EVENTS_PATH,
    EXPECTED,
    REFERENCE_NAME,
    Subscriber,
    percentile,
    raise_fd_limit,
    redis_connections,
    reference,
)
from bench.profiling import cpu_seconds, py_spy, stop_py_spy, summarize_profile
from bench.queued import queue_mails
from bench.sink import Sink
from bench.support import (
    ROOT,
    MailhubServer,
    Process,
    Row,
    event_time,
    print_table,
    run,
    sink_env,
    wait_for_http,
)
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.tasks import TaskStore
from tests.helpers import eventually, free_port
from tests.processes import clean_env, rss_mib

# --- the client process ------------------------------------------------------------------------


class _Stream(asyncio.Protocol):
    """One SSE stream: the events' data lines and when each event was complete."""

    def __init__(self, request: bytes, closed: asyncio.Future[None], first: Any) -> None:
        self.request = request
        self.closed = closed
        self.first = first
        self.buffer = b""
        self.status = 0
        self.events: list[tuple[float, float, str]] = []
        self.error = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

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


async def _client(args: argparse.Namespace) -> None:
    spec = json.loads(Path(args.spec).read_text())
    loop = asyncio.get_running_loop()
    streams: list[_Stream] = []
    connected = [0]
    gate = asyncio.Semaphore(100)  # connects in flight: the server's listen backlog is 128

    def first() -> None:
        connected[0] += 1

    async def one(task_id: str) -> None:
        request = (
            f"GET {EVENTS_PATH}?task_id={task_id} HTTP/1.1\r\nHost: {spec['host']}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
        ).encode()
        closed: asyncio.Future[None] = loop.create_future()
        stream = _Stream(request, closed, first)
        streams.append(stream)
        try:
            async with gate:
                await asyncio.wait_for(loop.create_connection(lambda: stream, spec["host"], spec["port"]), 30)
        except (TimeoutError, OSError) as exc:
            stream.error = f"{type(exc).__name__}: {exc}"
            return
        await closed

    started = time.monotonic()
    readers = [asyncio.create_task(one(task_id)) for task_id in spec["task_ids"]]
    total = len(readers)
    with contextlib.suppress(TimeoutError):
        await eventually(
            lambda: connected[0] + sum(bool(s.error) for s in streams) >= total,
            timeout=args.connect_timeout,
            what="connected",
            interval=0.05,
        )
    Path(args.out + ".ready").write_text(
        json.dumps({"connected": connected[0], "seconds": time.monotonic() - started})
    )
    _, pending = await asyncio.wait(readers, timeout=args.timeout)
    for reader in pending:
        reader.cancel()
    Path(args.out).write_text(
        json.dumps(
            [
                {
                    "task_id": task_id,
                    "events": s.events,
                    "error": s.error
                    or (
                        "still open at the timeout"
                        if s.events and s.status == 200 and not s.closed.done()
                        else ""
                    ),
                }
                for task_id, s in zip(spec["task_ids"], streams)
            ]
        )
    )


async def _reference(args: argparse.Namespace) -> None:
    """Record when each (task, seq) is published, in a process that does nothing else."""
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


# --- the measuring process ---------------------------------------------------------------------


@dataclass
class Phase:
    """What one server's run measured."""

    name: str
    subscribers: list[Subscriber] = field(default_factory=list)
    connect_seconds: float = 0.0
    rss: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: (pub/sub, all) Redis connections of the server: before subscribers, with them, after.
    redis: list[tuple[int, int]] = field(default_factory=list)
    idle_cpu: float = 0.0
    delivery_seconds: float = 0.0
    delivery_cpu: float = 0.0
    clients_cpu: float = 0.0
    from_publish: list[float] = field(default_factory=list)
    from_at: list[float] = field(default_factory=list)
    #: Per event: publish -> the last of its subscribers got it.
    spread: list[float] = field(default_factory=list)
    complete: int = 0
    #: The client processes' result files.
    outs: list[Path] = field(default_factory=list)

    @property
    def every(self) -> bool:
        return self.complete == len(self.subscribers)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, sink: Sink, valkey: EmbeddedRedis):
        self.args = args
        self.tmp = tmp
        self.sink = sink
        self.valkey = valkey
        self.env = sink_env(
            sink,
            tmp / "data",
            REDIS_URL=valkey.url,
            RETRY_BASE_DELAY="0.2",
            RETRY_MAX_DELAY="0.4",
            WORKER_CONCURRENCY="64",
            # Every subscriber connects from this one address.
            MAX_STREAMS_PER_CLIENT="100000",
        )
        self.redis = Redis.from_url(valkey.url, decode_responses=True, client_name="bench-fanout")
        self.store = TaskStore(self.redis, retention=3600, max_attempts=3, message_id_domain="example.com")
        self.published: dict[tuple[str, int], float] = {}

    async def queue_tasks(self, tag: str) -> list[str]:
        return await queue_mails(self.store, self.args.tasks, tag, in_flight=100)

    async def phase(self, name: str, server: Process, host: str, port: int, task_ids: list[str]) -> Phase:
        args, result = self.args, Phase(name)
        total = args.tasks * args.per_task
        result.rss = (rss_mib(server.pid), 0.0, 0.0)
        result.redis.append(await redis_connections(self.redis, server.pid))
        self.sink.handler.reset(refuse_first=True)

        clients, outs = [], []
        for c in range(args.clients):
            share = [task_ids[n % args.tasks] for n in range(c, total, args.clients)]
            spec = self.tmp / f"{name}-client{c}.json"
            spec.write_text(json.dumps({"host": host, "port": port, "task_ids": share}))
            outs.append(self.tmp / f"{name}-client{c}.out")
            clients.append(
                Process(
                    [
                        sys.executable,
                        "-m",
                        "bench.fanout_10k",
                        "client",
                        "--spec",
                        str(spec),
                        "--out",
                        str(outs[-1]),
                        "--timeout",
                        str(args.timeout),
                    ],
                    env=clean_env(),
                    log_path=self.tmp / f"{name}-client{c}.log",
                )
            )
        worker: Process | None = None
        profiler: Process | None = None
        try:
            await eventually(
                lambda: (
                    all(Path(str(o) + ".ready").exists() for o in outs)
                    or any(p.popen.poll() is not None for p in clients)
                ),
                timeout=120,
                what="client processes connected",
                interval=0.05,
            )
            ready = [json.loads(Path(str(o) + ".ready").read_text()) for o in outs]
            result.connect_seconds = max(r["seconds"] for r in ready)
            rss_peak = rss_mib(server.pid)
            result.redis.append(await redis_connections(self.redis, server.pid))

            if args.profile and name == "mailhub":
                profiler = py_spy(server.pid, args.profile / f"{name}-idle.txt")
            cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
            await asyncio.sleep(args.idle)
            result.idle_cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
            if profiler is not None:
                stop_py_spy(profiler)
                profiler = py_spy(server.pid, args.profile / f"{name}-delivery.txt")

            cpu0 = cpu_seconds(server.pid)
            clients_cpu0 = sum(cpu_seconds(p.pid) for p in clients)
            started = time.monotonic()
            worker = Process(
                [sys.executable, str(ROOT / "run.py"), "worker"],
                env=self.env,
                log_path=self.tmp / f"{name}-worker.log",
            )
            clients_cpu = {p.pid: 0.0 for p in clients}

            def all_ended() -> bool:
                for p in clients:
                    if p.popen.poll() is None:
                        with contextlib.suppress(OSError):
                            clients_cpu[p.pid] = cpu_seconds(p.pid)
                return all(p.popen.poll() is not None for p in clients)

            await eventually(
                all_ended, timeout=args.timeout + 30, what="client processes done", interval=0.02
            )
            result.delivery_seconds = time.monotonic() - started
            result.delivery_cpu = cpu_seconds(server.pid) - cpu0
            result.clients_cpu = sum(clients_cpu.values()) - clients_cpu0
        finally:
            if profiler is not None:
                stop_py_spy(profiler)
            for process in [*clients, *([worker] if worker else [])]:
                process.stop()
        await asyncio.sleep(1.0)
        result.rss = (result.rss[0], rss_peak, rss_mib(server.pid))
        result.redis.append(await redis_connections(self.redis, server.pid))
        result.outs = outs
        return result

    def collect(self, result: Phase) -> None:
        for out in result.outs:
            for row in json.loads(out.read_text()):
                subscriber = Subscriber(row["task_id"], error=row["error"])
                for mono, wall, data in row["events"]:
                    subscriber.docs.append(json.loads(data))
                    subscriber.received.append((mono, wall))
                result.subscribers.append(subscriber)
        last: dict[tuple[str, int], float] = collections.defaultdict(float)
        for s in result.subscribers:
            seqs = [doc["seq"] for doc in s.docs]
            if s.events == EXPECTED and not s.error and seqs == list(range(1, len(EXPECTED) + 1)):
                result.complete += 1
            for doc, (mono, wall) in zip(s.docs, s.received):
                if doc["seq"] == 1:
                    continue  # the stored state read at connect time, not a live event
                key = (doc["task_id"], doc["seq"])
                result.from_at.append((wall - event_time(doc)) * 1000)
                if key in self.published:
                    delay = (mono - self.published[key]) * 1000
                    result.from_publish.append(delay)
                    last[key] = max(last[key], delay)
        result.spread = list(last.values())


WHEN = ("before subscribers", "with all subscribers", "after")


def rows_for(phase: Phase, base: Phase | None, total: int) -> list[Row]:
    def row(figure: str, value: float, unit: str, base_value: float | None, goal: str = "") -> Row:
        return Row(
            f"{phase.name}: {figure}",
            value,
            unit,
            base_value,
            "baseline" if base_value is not None else "",
            goal,
        )

    b = base
    pick = (lambda f: f(b)) if b is not None else (lambda f: None)
    lat = lambda p, q: percentile(p.from_publish, q)  # noqa: E731
    per_sub = lambda p: (p.rss[1] - p.rss[0]) * 1024 / total  # noqa: E731
    return [
        row(
            "subscribers with every transition",
            phase.complete,
            f"of {total:,}",
            pick(lambda p: p.complete),
            "all",
        ),
        row(
            "events received",
            sum(len(s.docs) for s in phase.subscribers),
            f"of {total * len(EXPECTED):,}",
            pick(lambda p: sum(len(s.docs) for s in p.subscribers)),
        ),
        row("all connected in", phase.connect_seconds, "s", pick(lambda p: p.connect_seconds)),
        row(
            "latency publish -> client, p50",
            statistics.median(phase.from_publish),
            "ms",
            pick(lambda p: statistics.median(p.from_publish)),
        ),
        row("latency publish -> client, p99", lat(phase, 99), "ms", pick(lambda p: lat(p, 99)), "<= 100 ms"),
        row(
            "latency publish -> client, max",
            max(phase.from_publish),
            "ms",
            pick(lambda p: max(p.from_publish)),
        ),
        row(
            "latency event `at` -> client, p99",
            percentile(phase.from_at, 99),
            "ms",
            pick(lambda p: percentile(p.from_at, 99)),
        ),
        row(
            "publish -> last subscriber of the event, p50",
            statistics.median(phase.spread),
            "ms",
            pick(lambda p: statistics.median(p.spread)),
        ),
        row("server RSS before subscribers", phase.rss[0], "MiB", pick(lambda p: p.rss[0])),
        row("server RSS with all subscribers", phase.rss[1], "MiB", pick(lambda p: p.rss[1])),
        row("server RSS after all streams closed", phase.rss[2], "MiB", pick(lambda p: p.rss[2])),
        row("server RSS per subscriber", per_sub(phase), "KiB", pick(per_sub)),
        row(
            "server CPU while all subscribers idle",
            phase.idle_cpu * 100,
            "% of a core",
            pick(lambda p: p.idle_cpu * 100),
        ),
        row("server CPU in the delivery phase", phase.delivery_cpu, "CPU s", pick(lambda p: p.delivery_cpu)),
        row(
            "client processes' CPU in the delivery phase",
            phase.clients_cpu,
            "CPU s",
            pick(lambda p: p.clients_cpu),
        ),
        row(
            "delivery phase (worker start -> last stream closed)",
            phase.delivery_seconds,
            "s",
            pick(lambda p: p.delivery_seconds),
        ),
        *(
            row(f"Redis connections held, {when}", pair[1], "", pick(lambda p, i=i: p.redis[i][1]), "<= 2")
            for i, (when, pair) in enumerate(zip(WHEN, phase.redis))
        ),
        *(
            row(f"Redis pub/sub connections, {when}", pair[0], "", pick(lambda p, i=i: p.redis[i][0]), "1")
            for i, (when, pair) in enumerate(zip(WHEN, phase.redis))
            if i
        ),
    ]


async def measure(args: argparse.Namespace, tmp: Path, sink: Sink, valkey: EmbeddedRedis) -> int:
    bench = Bench(args, tmp, sink, valkey)
    total = args.tasks * args.per_task
    published = tmp / "published.json"
    watcher = Process(
        [
            sys.executable,
            "-m",
            "bench.fanout_10k",
            "reference",
            "--redis-url",
            valkey.url,
            "--out",
            str(published),
            "--timeout",
            "3600",
        ],
        env=clean_env(),
        log_path=tmp / "reference.log",
    )
    phases: dict[str, Phase] = {}
    try:
        await eventually(
            lambda: Path(f"{published}.ready").exists() or watcher.popen.poll() is not None,
            timeout=30,
            what="reference subscribed",
            interval=0.05,
        )
        await bench.store.queue.ensure_group()
        if not args.skip_baseline:
            port = free_port()
            baseline = Process(
                [
                    sys.executable,
                    "-m",
                    "bench.fanout_baseline",
                    "--port",
                    str(port),
                    "--redis-url",
                    valkey.url,
                ],
                env=clean_env(),
                log_path=tmp / "baseline.log",
            )
            try:
                await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/ready", baseline, 30)
                phases["baseline"] = await bench.phase(
                    "baseline", baseline, "127.0.0.1", port, await bench.queue_tasks("fanout-base")
                )
            finally:
                baseline.stop()
        web = MailhubServer("web", env=bench.env, log_dir=tmp)
        try:
            await asyncio.to_thread(web.wait_ready)
            phases["mailhub"] = await bench.phase(
                "mailhub", web, "127.0.0.1", web.port, await bench.queue_tasks("fanout-10k")
            )
        finally:
            web.stop()
    finally:
        watcher.stop()
        await bench.redis.aclose()
    bench.published = {(task, seq): at for task, seq, at in json.loads(published.read_text())}
    for phase in phases.values():
        bench.collect(phase)

    for phase in phases.values():
        errors = collections.Counter(s.error for s in phase.subscribers if s.error)
        print(
            f"\n{phase.name}: every subscriber received every transition: "
            f"{'yes' if phase.every else 'NO'} ({phase.complete}/{total} complete, "
            f"{sum(len(s.docs) for s in phase.subscribers)}/{total * len(EXPECTED)} events)"
            + (f"; errors: {dict(errors.most_common(3))}" if errors else "")
        )
    mailhub = phases["mailhub"]
    print_table(
        f"SSE fan-out: {total:,} subscribers on {args.tasks} tasks, one server process, "
        f"{args.clients} client processes",
        rows_for(mailhub, phases.get("baseline"), total),
        "python -m bench.fanout_10k " + " ".join(sys.argv[1:]),
    )
    if args.profile:
        for part in ("idle", "delivery"):
            summarize_profile(args.profile / f"mailhub-{part}.txt")
    return 0 if mailhub.every and mailhub.redis[1][0] == 1 else 1


async def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "reference":
        parser = argparse.ArgumentParser(prog="bench.fanout_10k reference")
        parser.add_argument("reference")
        parser.add_argument("--redis-url", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--timeout", type=float, default=3600.0)
        await _reference(parser.parse_args())
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        parser = argparse.ArgumentParser(prog="bench.fanout_10k client")
        parser.add_argument("client")
        parser.add_argument("--spec", required=True)
        parser.add_argument("--out", required=True)
        parser.add_argument("--timeout", type=float, default=180.0)
        parser.add_argument("--connect-timeout", type=float, default=90.0)
        raise_fd_limit()
        await _client(parser.parse_args())
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--per-task", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="seconds the server is watched idle with every subscriber connected",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each delivery phase")
    parser.add_argument(
        "--profile", type=Path, help="py-spy mailhub's web process; raw stacks in this directory"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    print(f"open files allowed: {raise_fd_limit()}")
    with (
        tempfile.TemporaryDirectory(prefix="mailhub-fanout10k-") as tmp,
        Sink(Path(tmp)) as sink,
        EmbeddedRedis(Path(tmp) / "valkey", persist=False) as valkey,
    ):
        return await measure(args, Path(tmp), sink, valkey)


if __name__ == "__main__":
    run(main)
