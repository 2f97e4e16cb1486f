"""Backlog: 100,000 mails queued while no worker runs, then one worker drains them.

    python -m bench.backlog [--count 100000] [--pool 16] [--raw-count 20000] [--timeout 600]

Processes (children of this script, stopped by PID): an embedded Valkey
(`EmbeddedRedis`, append-only file on, as mailhub's own embedded server runs)
and one `python run.py worker` (REDIS_URL set, RATE_LIMIT off,
ALLOWED_RECIPIENTS=@example.com, SMTP_POOL_SIZE=--pool, other settings at
their defaults), delivering to the aiosmtpd sink of `bench.sink` in this
process: STARTTLS + AUTH, counting every Message-ID.

1. The mails are queued through `TaskStore.enqueue` (the submit path's Lua
   script, without HTTP), 1,000 calls in flight at a time; `INFO memory`
   used_memory before and after gives Redis bytes per queued mail.
2. One worker starts; every `--sample` seconds the mails still to do (queue
   stream length + scheduled retries) are sampled. The drain rate is the
   count over the time from the worker's start to the last `delivered_at`
   (and, without start-up, from the first to the last `delivered_at`).
   With `--profile FILE`, py-spy samples the worker for `--profile-seconds`
   from the first progress sample on, and the top frames are printed.
3. Nothing lost: every task `success` after 1 attempt, and the sink got
   exactly `--count` messages with `--count` distinct Message-IDs, the same
   set as the tasks'.

Baseline, in the same run: the sink's own capacity, a bare aiosmtplib client
process (`bench.smtp_client`, as in `bench.delivery`) with `--pool` reused
connections sending `--raw-count` mails, best of one run before and one after
the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from redis.asyncio import Redis

from bench.delivery import raw_client_rate
from bench.fanout import rss_mib
from bench.profiling import cpu_seconds, py_spy, stop_py_spy, summarize_profile
from bench.sink import Sink
from bench.support import ROOT, Process, Row, mail, print_table, run, sink_env
from mailhub.settings import load_settings
from mailhub.store import keys
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import EmailRequest, TaskStore


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def remaining(redis: Redis) -> int:
    """Mails not yet in a terminal state: queue entries (new or in flight) + scheduled retries."""
    async with redis.pipeline(transaction=False) as pipe:
        length, retries = await pipe.xlen(keys.QUEUE).zcard(keys.RETRIES).execute()
    return int(length) + int(retries)


async def fields_of(redis: Redis, task_ids: list[str], *names: str) -> list[list[str | None]]:
    """HMGET `names` of every task, 1,000 per pipeline."""
    rows: list[list[str | None]] = []
    for start in range(0, len(task_ids), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids[start : start + 1000]:
                pipe.hmget(keys.task(task_id), *names)
            rows += await pipe.execute()
    return rows


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def measure(args: argparse.Namespace, tmp: Path, sink: Sink, valkey: EmbeddedRedis) -> int:
    env = sink_env(sink, tmp / "data", REDIS_URL=valkey.url, SMTP_POOL_SIZE=str(args.pool))
    redis = connect(valkey.url)
    store = TaskStore.from_settings(redis, load_settings(env, env_file=None))
    rows: list[Row] = []
    worker: Process | None = None
    profiler: Process | None = None
    try:
        capacity = await raw_client_rate(sink, args.raw_count, args.pool)
        sink.handler.reset()

        # 1. the backlog
        await store.queue.ensure_group()
        memory_before = await used_memory(redis)
        started = time.monotonic()
        task_ids: list[str] = []
        for start in range(0, args.count, 1000):
            batch = range(start, min(start + 1000, args.count))
            task_ids += await asyncio.gather(
                *(store.enqueue(EmailRequest(**mail(n, "backlog"))) for n in batch)
            )
        enqueue_seconds = time.monotonic() - started
        memory_queued = await used_memory(redis)
        if await remaining(redis) != args.count:
            raise RuntimeError(f"queued {await remaining(redis)} of {args.count}")
        sample_hash = int(await redis.memory_usage(keys.task(task_ids[0]), samples=0) or 0)
        stream_bytes = int(await redis.memory_usage(keys.QUEUE, samples=0) or 0)
        print(
            f"queued {args.count:,} mails in {enqueue_seconds:.1f} s; Redis used_memory "
            f"{memory_before / 2**20:.1f} -> {memory_queued / 2**20:.1f} MiB",
            flush=True,
        )

        # 2. one worker drains it
        worker_started = time.time()
        pids = {"bench process (the sink)": os.getpid(), "Valkey": valkey.process.pid}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        worker = Process(
            [sys.executable, str(ROOT / "run.py"), "worker"], env=env, log_path=tmp / "worker.log"
        )
        print(
            "| s since worker start | mails done | mails/s in the interval | delivered (sink) "
            "| worker RSS MiB |\n|---:|---:|---:|---:|---:|",
            flush=True,
        )
        deadline = time.monotonic() + args.timeout
        last_t, last_done = 0.0, 0
        while True:
            await asyncio.sleep(args.sample)
            if worker.popen.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{worker.log[-3000:]}")
            if args.profile and profiler is None:  # once the interpreter is up
                profiler = py_spy(worker.pid, args.profile, duration=args.profile_seconds)
            t, done = time.time() - worker_started, args.count - await remaining(redis)
            print(
                f"| {t:.0f} | {done:,} | {(done - last_done) / (t - last_t):,.0f} "
                f"| {sink.handler.delivered:,} | {rss_mib(worker.pid):.0f} |",
                flush=True,
            )
            last_t, last_done = t, done
            if done == args.count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{args.count - done:,} mails not done after {args.timeout:g} s "
                    f"(rate so far {done / t:,.0f} mails/s)"
                )
        worker_rss = rss_mib(worker.pid)
        busy = {
            "worker": cpu_seconds(worker.pid) / (time.time() - worker_started),
            **{
                name: (cpu_seconds(pid) - cpu0[name]) / (time.time() - worker_started)
                for name, pid in pids.items()
            },
        }
        worker.stop()
        worker = None

        # 3. nothing lost
        states = await fields_of(redis, task_ids, "state", "attempts", "delivered_at", "message_id")
        memory_drained = await used_memory(redis)
        not_success = sum(state != "success" for state, *_ in states)
        not_once = sum(attempts != "1" for _, attempts, *_ in states)
        delivered = sorted(epoch(at) for _, _, at, _ in states if at)
        task_message_ids = {message_id for *_, message_id in states}
        with sink.handler.lock:
            sink_ids = dict(sink.handler.message_ids)
        distinct, total = len(sink_ids), sum(sink_ids.values())
        same_ids = set(sink_ids) == task_message_ids
        lost = not_success or distinct != args.count or total != args.count or not same_ids
        print(
            f"\nnothing lost: {'NO' if lost else 'yes'} - tasks not success: {not_success}, "
            f"attempts != 1: {not_once}, sink: {total:,} messages, {distinct:,} distinct "
            f"Message-IDs, same set as the tasks': {'yes' if same_ids else 'NO'}"
        )

        capacity = max(capacity, await raw_client_rate(sink, args.raw_count, args.pool))
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
        if worker is not None:
            worker.stop()
        await redis.aclose()

    drain = args.count / (delivered[-1] - worker_started)
    steady = (len(delivered) - 1) / (delivered[-1] - delivered[0])
    raw = f"raw aiosmtplib, {args.pool} reused connections, {args.raw_count:,} mails"
    per_mail = (memory_queued - memory_before) / args.count
    rows = [
        Row(
            f"drain: {args.count:,} queued -> all success, one worker (from its start)",
            drain,
            "mails/s",
            capacity,
            raw,
        ),
        Row("drain, first -> last delivery (start-up excluded)", steady, "mails/s", capacity, raw),
        Row("worker start -> first delivery", delivered[0] - worker_started, "s"),
        Row("enqueue through TaskStore.enqueue, 1,000 in flight", args.count / enqueue_seconds, "mails/s"),
        Row("Redis used_memory per queued mail", per_mail, "bytes"),
        Row("MEMORY USAGE of one queued task hash", sample_hash, "bytes"),
        Row("MEMORY USAGE of the queue stream, per entry", stream_bytes / args.count, "bytes"),
        Row(
            "Redis used_memory per mail after the drain (results kept RESULT_RETENTION)",
            (memory_drained - memory_before) / args.count,
            "bytes",
        ),
        Row("Redis used_memory with the backlog queued", memory_queued / 2**20, "MiB"),
        Row("worker RSS at the end of the drain", worker_rss, "MiB"),
        *(
            Row(f"CPU of the {name} during the drain", share * 100, "% of a core")
            for name, share in busy.items()
        ),
        Row("tasks not success / sent more than once", not_success + not_once, "", goal="0"),
    ]
    print_table(
        f"Backlog: {args.count:,} mails queued, then one worker (aiosmtpd STARTTLS + AUTH sink)",
        rows,
        "python -m bench.backlog " + " ".join(sys.argv[1:]),
    )
    if args.profile:
        summarize_profile(args.profile)
    return 1 if lost or not_once else 0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument(
        "--pool", type=int, default=16, help="SMTP_POOL_SIZE, and the raw client's connections"
    )
    parser.add_argument("--raw-count", type=int, default=20_000, help="mails the raw client sends")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between progress samples")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the drain")
    parser.add_argument("--profile", type=Path, help="py-spy the worker; raw stacks to this file")
    parser.add_argument(
        "--profile-seconds", type=float, default=30.0, help="how long py-spy samples the worker"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailhub-backlog-") as tmp, Sink(Path(tmp)) as sink:
        with EmbeddedRedis(Path(tmp) / "valkey", persist=True) as valkey:
            return await measure(args, Path(tmp), sink, valkey)


if __name__ == "__main__":
    run(main)
