"""Enqueue: POST rate and latency at 64 connections, mailhub against a minimal baseline.

    python -m bench.enqueue [--duration 10] [--connections 64] [--loadgen wrk|python]

One embedded Valkey (append-only file on, as in production) serves, in turn:
the baseline (`bench.baseline_app`: JSON parse + one pipeline of HSET 5
fields, XADD, EXPIRE), mailhub's web process (`python run.py web`:
validation, rate limiting set high, idempotency keys), and for reference a
bare aiohttp handler. The load comes from a separate process: wrk with a Lua
script when installed (`apt-get install wrk`), else `bench.loadgen`. Each
target gets a 2 s warm-up; then `--rounds` measured runs per target,
interleaved (baseline, bare, mailhub, baseline, ...) so that a noisy moment
of the shared machine hits all alike; Redis is flushed before each; the
medians are reported. With `--profile FILE`, py-spy samples mailhub's web
process during its first round. With `--replica`, the Valkey gets a replica,
so mailhub (REDIS_MIN_REPLICAS auto) answers each batch of submits only once
the replica confirmed it (WAIT); the baseline does not wait.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench.baseline_app import baseline_queued
from bench.profiling import py_spy, stop_py_spy, summarize_profile
from bench.support import (
    SUBMIT_PATH,
    MailhubServer,
    Process,
    Row,
    print_table,
    run,
    running,
    wait_for_http,
)
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.queue import WorkQueue
from mailhub.store.redis_client import connect
from tests.helpers import free_port
from tests.processes import clean_env
from tests.redis_servers import acknowledging_replicas, wait_until

WRK_SCRIPT = r"""
local counter = 0
local prefix = "wrk" .. tostring(os.time()) .. tostring(math.random(1, 1000000000))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = prefix .. "-" .. counter
  local body = '{"to": "user@example.com", "subject": "Hello ' .. counter ..
    '", "body": "{username}님 안녕하세요!", "username": "홍길동"}'
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def load(url: str, *, seconds: float, connections: int, generator: str, work: Path) -> dict[str, int]:
    """Run the load generator process against `url`; its JSON summary."""
    if generator == "wrk":
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        args = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
    else:
        args = [
            sys.executable,
            "-m",
            "bench.loadgen",
            url,
            "--connections",
            str(connections),
            "--duration",
            str(seconds),
        ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, env=clean_env())
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Target:
    """A server under load: its process, the URL posted to, and how to count what it queued."""

    process: Process
    url: str
    #: Entries the target queued in Redis; None: it queues nothing (the bare handler).
    queued: Callable[[Redis], Awaitable[int]] | None


async def measure(
    target: Target, redis_url: str, args: argparse.Namespace, work: Path, profile: Path | None = None
) -> dict[str, float]:
    """Flush, measure one round; check every accepted POST left a queue entry."""
    redis = connect(redis_url)
    try:
        await redis.flushall()
        profiler = py_spy(target.process.pid, profile, duration=args.duration) if profile else None
        result = load(
            target.url, seconds=args.duration, connections=args.connections, generator=args.loadgen, work=work
        )
        if profiler is not None:
            stop_py_spy(profiler)
        queued = await target.queued(redis) if target.queued else None
    finally:
        await redis.aclose()
    ok = result["requests"] - result["non2xx"]
    if result["non2xx"] or result["errors"] or (queued is not None and queued < ok):
        raise RuntimeError(f"{target.process.popen.args!r}: {result}, {queued} queued")
    return {
        "rate": ok / (result["duration_us"] / 1e6),
        "p50": result["p50_us"] / 1000,
        "p99": result["p99_us"] / 1000,
    }


async def _mailhub_queued(redis: Redis) -> int:
    return (await WorkQueue(redis).depth()).queued


def start_targets(stack: contextlib.ExitStack, redis_url: str, work: Path) -> dict[str, Target]:
    """The baseline, the bare handler and mailhub's web process, each stopped when `stack` closes."""
    targets: dict[str, Target] = {}
    for name, bare in (("baseline", False), ("bare", True)):
        port = free_port()
        command = [sys.executable, "-m", "bench.baseline_app", "--port", str(port), "--redis-url", redis_url]
        process = Process(command + ["--bare"] * bare, env=clean_env(), log_path=work / f"{name}.log")
        stack.enter_context(running(process))
        queued = None if bare else baseline_queued
        targets[name] = Target(process, f"http://127.0.0.1:{port}{SUBMIT_PATH}", queued)
    env = clean_env(
        REDIS_URL=redis_url,
        RATE_LIMIT="1000000/minute",
        ALLOWED_RECIPIENTS="@example.com",
        LOG_LEVEL="warning",
    )
    server = stack.enter_context(running(MailhubServer("web", env=env, log_dir=work)))
    targets["mailhub"] = Target(server, server.url + SUBMIT_PATH, _mailhub_queued)
    return targets


async def interleaved_rounds(
    targets: dict[str, Target], redis_url: str, args: argparse.Namespace, work: Path
) -> dict[str, list[dict[str, float]]]:
    """Warm every target up, then measure `--rounds` rounds, one target after another in each."""
    for target in targets.values():
        wait_for_http(target.url.rsplit("/api", 1)[0] + "/openapi.json", target.process, 30)
        load(target.url, seconds=2, connections=args.connections, generator=args.loadgen, work=work)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    for n in range(args.rounds):
        # Interleaved, so a noisy moment of the machine hits every target alike.
        for name, target in targets.items():
            profile = args.profile if name == "mailhub" and n == 0 else None
            rounds[name].append(await measure(target, redis_url, args, work, profile))
    return rounds


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="measured rounds per target, interleaved; medians are reported"
    )
    parser.add_argument(
        "--loadgen", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument("--profile", type=Path, help="py-spy mailhub's first round; raw stacks to this file")
    parser.add_argument(
        "--replica", action="store_true", help="give the Valkey a replica: mailhub then waits for it (WAIT)"
    )
    args = parser.parse_args()
    # A replica's first sync starts at once rather than after 5 s.
    primary_args = ["--repl-diskless-sync-delay", "0"] if args.replica else []
    with (
        tempfile.TemporaryDirectory(prefix="mailhub-bench-") as tmp,
        EmbeddedRedis(Path(tmp) / "valkey", args=primary_args) as valkey,
        contextlib.ExitStack() as stack,
    ):
        if args.replica:
            stack.enter_context(replica_of(valkey, Path(tmp) / "replica"))
        targets = start_targets(stack, valkey.url, Path(tmp))
        rounds = await interleaved_rounds(targets, valkey.url, args, Path(tmp))
    results = {
        name: {figure: statistics.median(r[figure] for r in runs) for figure in runs[0]}
        for name, runs in rounds.items()
    }
    show(results, args)
    ratios = [m["rate"] / b["rate"] for m, b in zip(rounds["mailhub"], rounds["baseline"])]
    print("rate ratio per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    if args.profile:
        summarize_profile(args.profile)
    return 0


@contextlib.contextmanager
def replica_of(primary: EmbeddedRedis, data_dir: Path) -> Iterator[EmbeddedRedis]:
    """A replica of `primary`, in sync (it confirms writes) before this yields."""
    args = ["--replicaof", "127.0.0.1", str(primary.port)]
    with EmbeddedRedis(data_dir, persist=False, args=args) as replica:
        wait_until(lambda: acknowledging_replicas(primary.port) == 1, 30, "the replica in sync")
        yield replica


def show(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    base, mailhub, bare = results["baseline"], results["mailhub"], results["bare"]
    baseline = "JSON + 1 pipeline HSET/XADD/EXPIRE"
    print_table(
        f"Enqueue ({args.connections} connections, {args.duration:g} s, {args.loadgen}, "
        f"{'a replica, mailhub waits for it, ' if args.replica else ''}"
        f"median of {args.rounds} interleaved rounds)",
        [
            Row("mailhub POST rate", mailhub["rate"], "req/s", base["rate"], baseline, "ratio >= 0.9"),
            Row("mailhub p50 latency", mailhub["p50"], "ms", base["p50"], baseline),
            Row("mailhub p99 latency", mailhub["p99"], "ms", base["p99"], baseline, "ratio <= 1"),
            Row("bare aiohttp handler (ceiling)", bare["rate"], "req/s", base["rate"], baseline),
        ],
        f"python -m bench.enqueue --duration {args.duration:g} --connections {args.connections} "
        f"--rounds {args.rounds} --loadgen {args.loadgen}{' --replica' if args.replica else ''}",
    )


if __name__ == "__main__":
    run(main)
