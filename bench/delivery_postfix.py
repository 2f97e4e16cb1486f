"""Delivery to Postfix's smtp-sink: how fast one worker process sends.

    python -m bench.delivery_postfix [--count 20000] [--pool 16] [--timeout 300] [--profile FILE]

Needs Postfix's `smtp-sink` (`apt-get install postfix`; only the binary is
used, no mail system is started). smtp-sink answers plain SMTP at once and
costs almost nothing, so the figure is mailhub's own ceiling.

Processes (children of this script, stopped by PID): smtp-sink on
127.0.0.1, an embedded Valkey (append-only file on), and one
`python run.py worker` (SMTP_TLS=none, no AUTH, SMTP_POOL_SIZE=--pool).
The mails are queued first through `TaskStore.enqueue` (the submit path's
Lua script, without HTTP), then the worker starts; the rate is the count
over the time from the worker's start to the last `delivered_at` (and, to
leave start-up out, from the first to the last). Every task must end
`success` after 1 attempt.

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

from bench.backlog import epoch, fields_of, remaining
from bench.profiling import cpu_seconds, py_spy, stop_py_spy, summarize_profile
from bench.support import ROOT, Process, Row, clean_env, mail, print_table, run
from mailhub.settings import load_settings
from mailhub.store.embedded_valkey import EmbeddedRedis, free_port
from mailhub.store.redis_client import connect
from mailhub.store.tasks import EmailRequest, TaskStore

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


async def measure(args: argparse.Namespace, work: Path) -> int:
    port = free_port()
    sink = start_smtp_sink(port, work)
    worker: Process | None = None
    profiler: Process | None = None
    try:
        await asyncio.sleep(0.5)
        if sink.popen.poll() is not None:
            raise RuntimeError(f"smtp-sink exited:\n{sink.log}")
        capacity = await raw_rate(port, args.count, args.pool)
        with EmbeddedRedis(work / "valkey", persist=True) as valkey:
            env = clean_env(
                REDIS_URL=valkey.url,
                SMTP_HOST="127.0.0.1",
                SMTP_PORT=str(port),
                SMTP_TLS="none",
                SMTP_POOL_SIZE=str(args.pool),
                MAIL_FROM="Bench <noreply@example.com>",
                DATA_DIR=str(work / "data"),
                ALLOWED_RECIPIENTS="@example.com",
                RATE_LIMIT="off",
                LOG_LEVEL="warning",
            )
            redis = connect(valkey.url)
            try:
                store = TaskStore.from_settings(redis, load_settings(env, env_file=None))
                await store.queue.ensure_group()
                task_ids: list[str] = []
                for start in range(0, args.count, 1000):
                    task_ids += await asyncio.gather(
                        *(
                            store.enqueue(EmailRequest(**mail(n, "postfix")))
                            for n in range(start, min(start + 1000, args.count))
                        )
                    )
                started = time.time()
                worker = Process(
                    [sys.executable, str(ROOT / "run.py"), "worker"], env=env, log_path=work / "worker.log"
                )
                deadline = time.monotonic() + args.timeout
                while await remaining(redis):
                    if args.profile and profiler is None and time.time() - started > 1:
                        profiler = py_spy(worker.pid, args.profile)  # once the interpreter is up
                    if worker.popen.poll() is not None:
                        raise RuntimeError(f"the worker exited:\n{worker.log[-3000:]}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{await remaining(redis):,} mails left after {args.timeout:g} s")
                    await asyncio.sleep(0.2)
                if profiler is not None:
                    stop_py_spy(profiler)
                worker_cpu = cpu_seconds(worker.pid)
                worker.stop()
                worker = None
                states = await fields_of(redis, task_ids, "state", "attempts", "delivered_at")
            finally:
                await redis.aclose()
        capacity = max(capacity, await raw_rate(port, args.count, args.pool))
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
        if worker is not None:
            worker.stop()
        sink.stop()

    not_done = sum(state != "success" or attempts != "1" for state, attempts, _ in states)
    delivered = sorted(epoch(at) for *_, at in states if at)
    drain = args.count / (delivered[-1] - started)
    steady = (len(delivered) - 1) / (delivered[-1] - delivered[0])
    raw = f"raw aiosmtplib, {args.pool} reused connections"
    print_table(
        f"Delivery to Postfix smtp-sink: {args.count:,} queued mails, one worker",
        [
            Row(
                "one worker: worker start -> last success",
                drain,
                "mails/s",
                capacity,
                raw,
                ">= 1,500 mails/s",
            ),
            Row("one worker: first -> last delivery", steady, "mails/s", capacity, raw),
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
