"""Delivery to Postfix's smtp-sink: how fast one worker process sends.

    python -m bench.delivery_postfix [--count 20000] [--pool 16] [--timeout 300] [--profile FILE]

Needs Postfix's `smtp-sink` (`apt-get install postfix`; only the binary is
used, no mail system is started). smtp-sink answers plain SMTP at once and
costs almost nothing, so the figure is mailhub's own ceiling.

Processes (children of this script, stopped by PID): smtp-sink on
127.0.0.1, an embedded Valkey (append-only file on), and one
`python run.py worker` (SMTP_TLS=none, no AUTH, SMTP_POOL_SIZE=--pool).
The mails are queued first through `TaskStore.accept` (the submit path's
Lua script, without HTTP), then the worker starts; the rate is the count
over the time from the worker's start to the last delivery (the `at` of each
`success`; to leave start-up out, from the first to the last). Every task
must end `success` after 1 attempt.

Baseline, in the same run: a bare aiosmtplib client process
(`bench.smtp_client --plain`) with --pool reused connections and the same
message builder, best of one run before and one after.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.profiling import cpu_seconds, py_spy, stop_py_spy, summarize_profile
from bench.queued import outcomes, queue_mails
from bench.support import Process, Row, event_time, print_table, run, start_worker
from mailhub.settings import load_settings
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from tests.helpers import eventually, free_port
from tests.processes import clean_env

SMTP_SINK = "/usr/sbin/smtp-sink"


def start_smtp_sink(port: int, work: Path) -> Process:
    """smtp-sink on 127.0.0.1:`port`: plain SMTP, no AUTH, up to 256 sessions."""
    user = ["-u", "nobody"] if getpass.getuser() == "root" else []
    return Process(
        [SMTP_SINK, *user, "-a", f"127.0.0.1:{port}", "256"], env=clean_env(), log_path=work / "smtp-sink.log"
    )


async def raw_rate(port: int, count: int, connections: int) -> float:
    args = [
        sys.executable,
        "-m",
        "bench.smtp_client",
        "--plain",
        "--port",
        str(port),
        "--count",
        str(count),
        "--connections",
        str(connections),
    ]
    done = await asyncio.to_thread(
        subprocess.run, args, env=clean_env(), capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"smtp_client failed:\n{done.stderr[-3000:]}")
    return count / json.loads(done.stdout)["seconds"]


async def accepts(port: int) -> bool:
    """True once something listens on 127.0.0.1:`port`."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def worker_env(port: int, work: Path, redis_url: str, pool: int) -> dict[str, str]:
    """A worker delivering to smtp-sink: plain SMTP, no AUTH."""
    return clean_env(
        REDIS_URL=redis_url,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(port),
        SMTP_TLS="none",
        SMTP_POOL_SIZE=str(pool),
        MAIL_FROM="Bench <noreply@example.com>",
        DATA_DIR=str(work / "data"),
        ALLOWED_RECIPIENTS="@example.com",
        RATE_LIMIT="off",
        LOG_LEVEL="warning",
    )


async def drain(
    args: argparse.Namespace, env: dict[str, str], work: Path, store: TaskStore
) -> tuple[float, float]:
    """Start one worker, wait until the queue is empty, stop it: (its start, its CPU seconds)."""
    started = time.time()
    worker = start_worker(env, work / "worker.log")
    profiler: Process | None = None
    try:
        deadline = time.monotonic() + args.timeout
        while waiting := await store.queue.backlog():
            if args.profile and profiler is None and time.time() - started > 1:
                profiler = py_spy(worker.pid, args.profile)  # once the interpreter is up
            if worker.popen.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{worker.log[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{waiting:,} mails left after {args.timeout:g} s")
            await asyncio.sleep(0.2)
        return started, cpu_seconds(worker.pid)
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
        worker.stop()


async def measure(args: argparse.Namespace, work: Path) -> int:
    port = free_port()
    sink = start_smtp_sink(port, work)
    try:
        await eventually(lambda: accepts(port), timeout=10, interval=0.05, what="smtp-sink listening")
        capacity = await raw_rate(port, args.count, args.pool)
        with EmbeddedRedis(work / "valkey", persist=True) as valkey:
            env = worker_env(port, work, valkey.url, args.pool)
            redis = connect(valkey.url)
            try:
                store = TaskStore.from_settings(redis, load_settings(env, env_file=None))
                task_ids = await queue_mails(store, args.count, "postfix")
                started, worker_cpu = await drain(args, env, work, store)
                documents = await outcomes(store, task_ids)
            finally:
                await redis.aclose()
        capacity = max(capacity, await raw_rate(port, args.count, args.pool))
    finally:
        sink.stop()
    return report(args, capacity, started, worker_cpu, documents)


def report(
    args: argparse.Namespace, capacity: float, started: float, worker_cpu: float, documents: list[dict]
) -> int:
    """Print the table; 1 if a task did not end `success` after exactly 1 attempt."""
    not_done = sum(doc.get("status") != "success" or doc.get("attempts") != 1 for doc in documents)
    delivered = sorted(event_time(doc) for doc in documents if doc.get("status") == "success")
    raw = f"raw aiosmtplib, {args.pool} reused connections"
    print_table(
        f"Delivery to Postfix smtp-sink: {args.count:,} queued mails, one worker",
        [
            Row(
                "one worker: worker start -> last success",
                args.count / (delivered[-1] - started),
                "mails/s",
                capacity,
                raw,
                ">= 1,500 mails/s",
            ),
            Row(
                "one worker: first -> last delivery",
                (len(delivered) - 1) / (delivered[-1] - delivered[0]),
                "mails/s",
                capacity,
                raw,
            ),
            Row("worker CPU per mail", worker_cpu / args.count * 1e6, "µs"),
            Row("tasks not success after exactly 1 attempt", not_done, "", goal="0"),
        ],
        "python -m bench.delivery_postfix " + " ".join(sys.argv[1:]),
    )
    if args.profile:
        summarize_profile(args.profile)
    return 1 if not_done else 0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument(
        "--pool", type=int, default=16, help="SMTP_POOL_SIZE, and the raw client's connections"
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--profile", type=Path, help="py-spy the worker; raw stacks to this file")
    args = parser.parse_args()
    if not shutil.which(SMTP_SINK):
        print(f"{SMTP_SINK} not found: apt-get install postfix", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mailhub-bench-") as tmp:
        return await measure(args, Path(tmp))


if __name__ == "__main__":
    run(main)
