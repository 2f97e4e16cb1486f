"""Fan-out at 10,000: SSE subscribers read by several client processes, against a bare baseline.

    python -m bench.fanout_10k [--tasks 100] [--per-task 100] [--clients 4] [--profile DIR]

One Python process cannot connect and read 10,000 streams in time (run
`python -m bench.fanout --tasks 100 --per-task 100`: its connect phase times
out), so here the subscribers are split over `--clients` client processes
(`python -m bench.fanout_clients client ...`), each a bare asyncio protocol per
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
`python -m bench.fanout_clients reference ...`) to the moment a client process
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
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from bench.fanout import EXPECTED, Subscriber, fanout_env, percentile, raise_fd_limit, redis_connections
from bench.profiling import cpu_seconds, py_spy, stop_py_spy, summarize_profile
from bench.queued import queue_mails
from bench.sink import Sink
from bench.support import (
    MailhubServer,
    Process,
    Row,
    event_time,
    print_table,
    run,
    start_worker,
    wait_for_http,
    with_sink_and_valkey,
)
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.tasks import TaskStore
from tests.helpers import eventually, free_port
from tests.processes import clean_env, rss_mib


def helper_process(*args: str, log_path: Path) -> Process:
    """`python -m bench.fanout_clients ...` (a client process or the reference)."""
    return Process([sys.executable, "-m", "bench.fanout_clients", *args], env=clean_env(), log_path=log_path)


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
    """One run: the environment of its mailhub processes, and each server's phase."""

    def __init__(self, args: argparse.Namespace, tmp: Path, sink: Sink, valkey: EmbeddedRedis):
        self.args = args
        self.tmp = tmp
        self.sink = sink
        self.valkey = valkey
        self.env = fanout_env(sink, tmp, valkey.url)
        self.redis = Redis.from_url(valkey.url, decode_responses=True, client_name="bench-fanout")
        self.store = TaskStore(self.redis, retention=3600, max_attempts=3, message_id_domain="example.com")
        self.published: dict[tuple[str, int], float] = {}

    async def queue_tasks(self, tag: str) -> list[str]:
        return await queue_mails(self.store, self.args.tasks, tag, in_flight=100)

    async def phase(self, name: str, server: Process, host: str, port: int, task_ids: list[str]) -> Phase:
        """Connect every subscriber to `server`, watch it idle, then deliver; what it measured."""
        result = Phase(name)
        result.rss = (rss_mib(server.pid), 0.0, 0.0)
        result.redis.append(await redis_connections(self.redis, server.pid))
        self.sink.handler.reset(refuse_first=True)
        clients = self._start_clients(result, host, port, task_ids)
        profiler: Process | None = None
        try:
            await eventually(
                lambda: (
                    all(Path(f"{out}.ready").exists() for out in result.outs)
                    or any(p.popen.poll() is not None for p in clients)
                ),
                timeout=120,
                what="client processes connected",
                interval=0.05,
            )
            ended = [client for client in clients if client.popen.poll() is not None]
            if ended:
                raise RuntimeError(
                    f"a client process ended (exit {ended[0].popen.poll()}) before all were connected:"
                    f"\n{ended[0].log[-3000:]}"
                )
            ready = [json.loads(Path(f"{out}.ready").read_text()) for out in result.outs]
            result.connect_seconds = max(r["seconds"] for r in ready)
            rss_peak = rss_mib(server.pid)
            result.redis.append(await redis_connections(self.redis, server.pid))
            profiler = await self._watch_idle(result, server)
            await self._deliver(result, server, clients)
        finally:
            if profiler is not None:
                stop_py_spy(profiler)
            for client in clients:
                client.stop()
        await asyncio.sleep(1.0)  # let the server close what the clients left
        result.rss = (result.rss[0], rss_peak, rss_mib(server.pid))
        result.redis.append(await redis_connections(self.redis, server.pid))
        return result

    def _start_clients(self, result: Phase, host: str, port: int, task_ids: list[str]) -> list[Process]:
        """The client processes, each following its share of the subscribers."""
        args, total = self.args, self.args.tasks * self.args.per_task
        clients = []
        for c in range(args.clients):
            share = [task_ids[n % args.tasks] for n in range(c, total, args.clients)]
            spec = self.tmp / f"{result.name}-client{c}.json"
            spec.write_text(json.dumps({"host": host, "port": port, "task_ids": share}))
            result.outs.append(self.tmp / f"{result.name}-client{c}.out")
            command = [
                "client",
                "--spec",
                str(spec),
                "--out",
                str(result.outs[-1]),
                "--timeout",
                str(args.timeout),
            ]
            clients.append(helper_process(*command, log_path=self.tmp / f"{result.name}-client{c}.log"))
        return clients

    async def _watch_idle(self, result: Phase, server: Process) -> Process | None:
        """The server's CPU while every subscriber is connected and nothing happens.

        With `--profile`, profiles mailhub idle; returns the profiler of the delivery phase.
        """
        profiling = self.args.profile and result.name == "mailhub"
        profiler = py_spy(server.pid, self.args.profile / "mailhub-idle.txt") if profiling else None
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(self.args.idle)
        result.idle_cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        if profiler is None:
            return None
        stop_py_spy(profiler)
        return py_spy(server.pid, self.args.profile / "mailhub-delivery.txt")

    async def _deliver(self, result: Phase, server: Process, clients: list[Process]) -> None:
        """Start the worker; wait until every client process has seen its streams end."""
        cpu0 = cpu_seconds(server.pid)
        clients_cpu = {p.pid: cpu_seconds(p.pid) for p in clients}
        clients_cpu0 = sum(clients_cpu.values())
        started = time.monotonic()
        worker = start_worker(self.env, self.tmp / f"{result.name}-worker.log")
        try:

            def all_ended() -> bool:
                for p in clients:
                    if p.popen.poll() is None:
                        with contextlib.suppress(OSError):
                            clients_cpu[p.pid] = cpu_seconds(p.pid)
                return all(p.popen.poll() is not None for p in clients)

            await eventually(
                all_ended, timeout=self.args.timeout + 30, what="client processes done", interval=0.02
            )
        finally:
            worker.stop()
        result.delivery_seconds = time.monotonic() - started
        result.delivery_cpu = cpu_seconds(server.pid) - cpu0
        result.clients_cpu = sum(clients_cpu.values()) - clients_cpu0

    def collect(self, result: Phase) -> None:
        """Read the client processes' files into the phase: subscribers, latencies, completeness."""
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


def _figures(total: int) -> list[tuple[str, str, Callable[[Phase], float], str]]:
    """(figure, unit, how to read it from a phase, goal) of each row of the table."""
    return [
        ("subscribers with every transition", f"of {total:,}", lambda p: p.complete, "all"),
        (
            "events received",
            f"of {total * len(EXPECTED):,}",
            lambda p: sum(len(s.docs) for s in p.subscribers),
            "",
        ),
        ("all connected in", "s", lambda p: p.connect_seconds, ""),
        ("latency publish -> client, p50", "ms", lambda p: statistics.median(p.from_publish), ""),
        ("latency publish -> client, p99", "ms", lambda p: percentile(p.from_publish, 99), "<= 100 ms"),
        ("latency publish -> client, max", "ms", lambda p: max(p.from_publish), ""),
        ("latency event `at` -> client, p99", "ms", lambda p: percentile(p.from_at, 99), ""),
        ("publish -> last subscriber of the event, p50", "ms", lambda p: statistics.median(p.spread), ""),
        ("server RSS before subscribers", "MiB", lambda p: p.rss[0], ""),
        ("server RSS with all subscribers", "MiB", lambda p: p.rss[1], ""),
        ("server RSS after all streams closed", "MiB", lambda p: p.rss[2], ""),
        ("server RSS per subscriber", "KiB", lambda p: (p.rss[1] - p.rss[0]) * 1024 / total, ""),
        ("server CPU while all subscribers idle", "% of a core", lambda p: p.idle_cpu * 100, ""),
        ("server CPU in the delivery phase", "CPU s", lambda p: p.delivery_cpu, ""),
        ("client processes' CPU in the delivery phase", "CPU s", lambda p: p.clients_cpu, ""),
        ("delivery phase (worker start -> last stream closed)", "s", lambda p: p.delivery_seconds, ""),
        *(
            (f"Redis connections held, {when}", "", lambda p, i=i: p.redis[i][1], "<= 2")
            for i, when in enumerate(WHEN)
        ),
        *(
            (f"Redis pub/sub connections, {when}", "", lambda p, i=i: p.redis[i][0], "1")
            for i, when in enumerate(WHEN)
            if i
        ),
    ]


def rows_for(phase: Phase, base: Phase | None, total: int) -> list[Row]:
    """The table: each figure of `phase`, with the baseline's beside it when there is one."""
    return [
        Row(
            f"{phase.name}: {figure}",
            read(phase),
            unit,
            read(base) if base is not None else None,
            "baseline" if base is not None else "",
            goal,
        )
        for figure, unit, read, goal in _figures(total)
    ]


async def _run_baseline(bench: Bench) -> Phase:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bench.fanout_baseline",
        "--port",
        str(port),
        "--redis-url",
        bench.valkey.url,
    ]
    baseline = Process(command, env=clean_env(), log_path=bench.tmp / "baseline.log")
    try:
        await asyncio.to_thread(wait_for_http, f"http://127.0.0.1:{port}/ready", baseline, 30)
        task_ids = await bench.queue_tasks("fanout-base")
        return await bench.phase("baseline", baseline, "127.0.0.1", port, task_ids)
    finally:
        baseline.stop()


async def _run_mailhub(bench: Bench) -> Phase:
    web = MailhubServer("web", env=bench.env, log_dir=bench.tmp)
    try:
        await asyncio.to_thread(web.wait_ready)
        task_ids = await bench.queue_tasks("fanout-10k")
        return await bench.phase("mailhub", web, "127.0.0.1", web.port, task_ids)
    finally:
        web.stop()


def report(args: argparse.Namespace, phases: dict[str, Phase]) -> int:
    """Print each phase's completeness and the table; the exit code."""
    total = args.tasks * args.per_task
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


async def measure(args: argparse.Namespace, tmp: Path, sink: Sink, valkey: EmbeddedRedis) -> int:
    bench = Bench(args, tmp, sink, valkey)
    published = tmp / "published.json"
    command = ["reference", "--redis-url", valkey.url, "--out", str(published), "--timeout", "3600"]
    watcher = helper_process(*command, log_path=tmp / "reference.log")
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
            phases["baseline"] = await _run_baseline(bench)
        phases["mailhub"] = await _run_mailhub(bench)
    finally:
        watcher.stop()
        await bench.redis.aclose()
    bench.published = {(task, seq): at for task, seq, at in json.loads(published.read_text())}
    for phase in phases.values():
        bench.collect(phase)
    return report(args, phases)


async def main() -> int:
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
    return await with_sink_and_valkey(measure, args)


if __name__ == "__main__":
    run(main)
