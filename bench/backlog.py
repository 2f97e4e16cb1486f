"""Backlog: 100,000 mails queued while no worker runs, then one worker drains them.

    python -m bench.backlog [--count 100000] [--pool 16] [--raw-count 20000] [--timeout 600]

Processes (children of this script, stopped by PID): an embedded Valkey
(`EmbeddedRedis`, append-only file on, as mailhub's own embedded server runs)
and one `python run.py worker` (REDIS_URL set, RATE_LIMIT off,
ALLOWED_RECIPIENTS=@example.com, SMTP_POOL_SIZE=--pool, other settings at
their defaults), delivering to the aiosmtpd sink of `bench.sink` in this
process: STARTTLS + AUTH, counting every Message-ID.

1. The mails are queued through `TaskStore.accept` (the submit path's Lua
   script, without HTTP), 1,000 calls in flight at a time; `INFO memory`
   used_memory before and after gives Redis bytes per queued mail (issue
   14's goal: at most 600), split by kind of key (`bench.redis_memory`);
   the same again after the drain, per finished mail.
2. One worker starts; every `--sample` seconds the mails still to do (the
   queue's backlog: stream entries + scheduled retries) are sampled. The
   drain rate is the count over the time from the worker's start to the last
   delivery (the `at` of each `success`; without start-up, from the first to
   the last).
   With `--profile FILE`, py-spy samples the worker for `--profile-seconds`
   from the first progress sample on, and the top frames are printed.
3. Nothing lost: every task's result `success` after 1 attempt, and the sink
   got exactly `--count` messages with `--count` distinct Message-IDs, one
   for each task.

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
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench.delivery import raw_client_rate
from bench.profiling import cpu_seconds, py_spy, stop_py_spy, summarize_profile
from bench.queued import outcomes, queue_mails, task_id_in
from bench.redis_memory import bytes_per_mail, used_memory
from bench.sink import Sink
from bench.support import (
    Process,
    Row,
    event_time,
    print_table,
    run,
    sink_env,
    start_worker,
    with_sink_and_valkey,
)
from mailhub.settings import load_settings
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from tests.processes import rss_mib


@dataclass
class Backlog:
    """The queued mails and what Redis holds for them."""

    task_ids: list[str]
    seconds: float
    memory_before: int
    memory_queued: int
    #: Bytes per mail of each kind of key (`redis_memory.bytes_per_mail`).
    kinds: dict[str, float]


@dataclass
class Drain:
    """One worker's run through the backlog."""

    started: float
    worker_rss: float
    #: Share of a core each process was busy during the drain.
    busy: dict[str, float]


@dataclass
class Verdict:
    """What the drain left behind."""

    not_success: int
    not_once: int
    #: Epoch seconds of every delivery, sorted.
    delivered: list[float]
    lost: bool
    memory_drained: int
    #: Bytes per mail of each kind of key, results kept.
    kinds: dict[str, float]


async def queue_backlog(store: TaskStore, redis: Redis, count: int) -> Backlog:
    """Queue `count` mails while no worker runs; Redis memory before and after."""
    memory_before = await used_memory(redis)
    started = time.monotonic()
    task_ids = await queue_mails(store, count, "backlog")
    seconds = time.monotonic() - started
    if (waiting := await store.queue.backlog()) != count:
        raise RuntimeError(f"queued {waiting} of {count}")
    memory_queued = await used_memory(redis)
    kinds = await bytes_per_mail(redis, task_ids)
    backlog = Backlog(task_ids, seconds, memory_before, memory_queued, kinds)
    print(
        f"queued {count:,} mails in {seconds:.1f} s; Redis used_memory "
        f"{memory_before / 2**20:.1f} -> {backlog.memory_queued / 2**20:.1f} MiB",
        flush=True,
    )
    return backlog


async def drain_with_one_worker(
    args: argparse.Namespace, env: dict[str, str], tmp: Path, sink: Sink, store: TaskStore, valkey_pid: int
) -> Drain:
    """Start one worker, print its progress every `--sample` s until the queue is empty, stop it."""
    started = time.time()
    pids = {"bench process (the sink)": os.getpid(), "Valkey": valkey_pid}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    worker = start_worker(env, tmp / "worker.log")
    profiler: Process | None = None
    try:
        print(
            "| s since worker start | mails done | mails/s in the interval | delivered (sink) "
            "| worker RSS MiB |\n|---:|---:|---:|---:|---:|",
            flush=True,
        )
        deadline = time.monotonic() + args.timeout
        last = (0.0, 0)
        while last[1] < args.count:
            await asyncio.sleep(args.sample)
            if worker.popen.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{worker.log[-3000:]}")
            if args.profile and profiler is None:  # once the interpreter is up
                profiler = py_spy(worker.pid, args.profile, duration=args.profile_seconds)
            last = await _progress(args.count, started, last, store, sink, worker.pid)
            if last[1] < args.count and time.monotonic() > deadline:
                raise TimeoutError(f"{args.count - last[1]:,} mails not done after {args.timeout:g} s")
        elapsed = time.time() - started
        busy = {name: (cpu_seconds(pid) - cpu0[name]) / elapsed for name, pid in pids.items()}
        return Drain(started, rss_mib(worker.pid), {"worker": cpu_seconds(worker.pid) / elapsed, **busy})
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
        worker.stop()


async def _progress(
    count: int, started: float, last: tuple[float, int], store: TaskStore, sink: Sink, worker_pid: int
) -> tuple[float, int]:
    """Print one row of the drain's progress; (seconds since the start, mails done)."""
    t, done = time.time() - started, count - await store.queue.backlog()
    print(
        f"| {t:.0f} | {done:,} | {(done - last[1]) / (t - last[0]):,.0f} "
        f"| {sink.handler.delivered:,} | {rss_mib(worker_pid):.0f} |",
        flush=True,
    )
    return t, done


async def check_nothing_lost(store: TaskStore, redis: Redis, task_ids: list[str], sink: Sink) -> Verdict:
    """Every task `success` once, and the sink got one message for each, no more."""
    documents = await outcomes(store, task_ids)
    not_success = sum(doc.get("status") != "success" for doc in documents)
    not_once = sum(doc.get("attempts") != 1 for doc in documents)
    delivered = sorted(event_time(doc) for doc in documents if doc.get("status") == "success")
    with sink.handler.lock:
        sink_ids = dict(sink.handler.message_ids)
    distinct, total = len(sink_ids), sum(sink_ids.values())
    same_ids = {task_id_in(message_id) for message_id in sink_ids} == set(task_ids)
    lost = bool(not_success) or distinct != len(task_ids) or total != len(task_ids) or not same_ids
    print(
        f"\nnothing lost: {'NO' if lost else 'yes'} - tasks not success: {not_success}, "
        f"attempts != 1: {not_once}, sink: {total:,} messages, {distinct:,} distinct "
        f"Message-IDs, one for each task: {'yes' if same_ids else 'NO'}"
    )
    memory_drained = await used_memory(redis)
    kinds = await bytes_per_mail(redis, task_ids)
    return Verdict(not_success, not_once, delivered, lost, memory_drained, kinds)


def rows(
    args: argparse.Namespace, capacity: float, backlog: Backlog, drain: Drain, verdict: Verdict
) -> list[Row]:
    delivered = verdict.delivered
    raw = f"raw aiosmtplib, {args.pool} reused connections, {args.raw_count:,} mails"
    queued = (backlog.memory_queued - backlog.memory_before) / args.count
    finished = (verdict.memory_drained - backlog.memory_before) / args.count
    return [
        Row(
            f"drain: {args.count:,} queued -> all success, one worker (from its start)",
            args.count / (delivered[-1] - drain.started),
            "mails/s",
            capacity,
            raw,
        ),
        Row(
            "drain, first -> last delivery (start-up excluded)",
            (len(delivered) - 1) / (delivered[-1] - delivered[0]),
            "mails/s",
            capacity,
            raw,
        ),
        Row("worker start -> first delivery", delivered[0] - drain.started, "s"),
        Row("enqueue through TaskStore.accept, 1,000 in flight", args.count / backlog.seconds, "mails/s"),
        *memory_rows("queued mail", queued, backlog.kinds),
        *memory_rows("mail after the drain (results kept RESULT_RETENTION)", finished, verdict.kinds),
        Row("Redis used_memory with the backlog queued", backlog.memory_queued / 2**20, "MiB"),
        Row("worker RSS at the end of the drain", drain.worker_rss, "MiB"),
        *(
            Row(f"CPU of the {name} during the drain", share * 100, "% of a core")
            for name, share in drain.busy.items()
        ),
        Row("tasks not success / sent more than once", verdict.not_success + verdict.not_once, "", goal="0"),
    ]


def memory_rows(what: str, per_mail: float, kinds: dict[str, float]) -> list[Row]:
    """Redis bytes per mail (issue 14's goal), then where they go, by kind of key."""
    rest = per_mail - sum(kinds.values())
    return [
        Row(f"Redis used_memory per {what}", per_mail, "bytes", goal="<= 600 bytes"),
        *(Row(f"- of which {kind} (MEMORY USAGE)", size, "bytes") for kind, size in kinds.items() if size),
        Row("- of which the rest (keyspace and expiry tables, allocator, clients)", rest, "bytes"),
    ]


async def measure(args: argparse.Namespace, tmp: Path, sink: Sink, valkey: EmbeddedRedis) -> int:
    env = sink_env(sink, tmp / "data", REDIS_URL=valkey.url, SMTP_POOL_SIZE=str(args.pool))
    redis = connect(valkey.url)
    store = TaskStore.from_settings(redis, load_settings(env, env_file=None))
    assert valkey.process is not None
    try:
        capacity = await raw_client_rate(sink, args.raw_count, args.pool)
        sink.handler.reset()
        backlog = await queue_backlog(store, redis, args.count)
        drain = await drain_with_one_worker(args, env, tmp, sink, store, valkey.process.pid)
        verdict = await check_nothing_lost(store, redis, backlog.task_ids, sink)
        capacity = max(capacity, await raw_client_rate(sink, args.raw_count, args.pool))
    finally:
        await redis.aclose()
    print_table(
        f"Backlog: {args.count:,} mails queued, then one worker (aiosmtpd STARTTLS + AUTH sink)",
        rows(args, capacity, backlog, drain, verdict),
        "python -m bench.backlog " + " ".join(sys.argv[1:]),
    )
    if args.profile:
        summarize_profile(args.profile)
    return 1 if verdict.lost or verdict.not_once else 0


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
    return await with_sink_and_valkey(measure, args, persist=True)


if __name__ == "__main__":
    run(main)
