"""Delivery: 2,000 mails through the API until all are `success`, against the sink's capacity.

    python -m bench.delivery [--count 2000] [--pool 16]

The sink is aiosmtpd with STARTTLS and AUTH, in this process. Its capacity is
measured in the same run by a bare aiosmtplib client process with as many
reused connections as mailhub's pool (best of a run before and one after
mailhub's), and, for reference, with a new connection per mail. mailhub runs
as `python run.py` (web, worker and embedded Valkey in one process), then as
separate `web` and 1 or 2 `worker` processes sharing a Valkey; each figure is
mails divided by the time from the first submit to the last `success`.
CPU per mail is given for the all-in-one run (the mailhub process, and this
process: sink, submits and result polls) against the raw client run (the
client process, and this process: the sink).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench.profiling import cpu_seconds, py_spy, stop_py_spy, summarize_profile
from bench.sink import Sink
from bench.support import (
    MailhubServer,
    Row,
    event_time,
    mail,
    print_table,
    run,
    running,
    sink_env,
    submit_all,
    wait_for_results,
)
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.queue import WorkQueue
from mailhub.store.redis_client import connect
from tests.helpers import eventually
from tests.processes import clean_env


@dataclass(frozen=True)
class RawRun:
    """A run of the bare client: its rate, and CPU seconds per mail of it (sending only) and of the sink."""

    rate: float
    client_cpu: float
    sink_cpu: float


async def raw_client(sink: Sink, count: int, connections: int, *, fresh: bool = False) -> RawRun:
    """Send `count` mails through `sink` from a bare aiosmtplib client process."""
    sink.handler.reset()
    args = [
        sys.executable,
        "-m",
        "bench.smtp_client",
        "--port",
        str(sink.port),
        "--ca",
        str(sink.ca_file),
        "--count",
        str(count),
        "--connections",
        str(connections),
    ]
    sink_started = time.process_time()
    done = await asyncio.to_thread(
        subprocess.run,
        args + ["--fresh"] * fresh,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    sink_cpu = time.process_time() - sink_started
    if done.returncode != 0:
        raise RuntimeError(f"smtp_client failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    if sink.handler.delivered != count:
        raise RuntimeError(f"sink got {sink.handler.delivered} of {count} raw mails")
    return RawRun(count / result["seconds"], result["cpu_seconds"] / count, sink_cpu / count)


async def raw_client_rate(sink: Sink, count: int, connections: int, *, fresh: bool = False) -> float:
    """Mails per second a bare aiosmtplib client process gets through `sink`."""
    return (await raw_client(sink, count, connections, fresh=fresh)).rate


async def mailhub_rate(
    sink: Sink, count: int, pool: int, work: Path, profile: Path | None = None
) -> tuple[float, float, float]:
    """Mails per second from the first submit to the last `success`, all checked delivered;
    and the CPU seconds per mail of the mailhub process and of this one (sink, submits).
    With `profile`, py-spy samples the mailhub process meanwhile."""
    sink.handler.reset()
    env = sink_env(sink, work / "data", SMTP_POOL_SIZE=str(pool))
    with running(MailhubServer(env=env, log_dir=work)) as server:
        server.wait_ready()
        profiler = py_spy(server.pid, profile) if profile else None
        mailhub0, bench0 = cpu_seconds(server.pid), time.process_time()
        submitted = await submit_all(server.url, [mail(n, "delivery") for n in range(count)])
        if submitted.errors:
            raise RuntimeError(f"{len(submitted.errors)} submits failed: {submitted.errors[:3]}")
        await eventually(lambda: sink.handler.delivered >= count, timeout=300, what="delivery", interval=0.05)
        task_ids = [t for t in submitted.task_ids if t]
        documents = await wait_for_results(server.url, task_ids, timeout=60)
        mailhub_cpu, bench_cpu = cpu_seconds(server.pid) - mailhub0, time.process_time() - bench0
        if profiler is not None:
            stop_py_spy(profiler)
    statuses = {doc["status"] for doc in documents}
    if statuses != {"success"} or sink.handler.delivered != count:
        raise RuntimeError(f"statuses {statuses}, {sink.handler.delivered} delivered of {count}")
    rate = count / (max(map(event_time, documents)) - submitted.started)
    return rate, mailhub_cpu / count, bench_cpu / count


async def split_rate(sink: Sink, count: int, pool: int, workers: int, work: Path) -> float:
    """As `mailhub_rate`, with `python run.py web` and `workers` worker processes on one Valkey."""
    sink.handler.reset()
    with EmbeddedRedis(work / f"valkey-{workers}", persist=True) as valkey:
        env = sink_env(sink, work / "data", SMTP_POOL_SIZE=str(pool), REDIS_URL=valkey.url)
        processes = [MailhubServer("worker", env=env, log_dir=work) for _ in range(workers)]
        web = MailhubServer("web", env=env, log_dir=work)
        redis = connect(valkey.url)
        try:
            web.wait_ready()
            await eventually(
                lambda: _consumers(redis, workers), timeout=30, what="workers reading", interval=0.05
            )
            submitted = await submit_all(web.url, [mail(n, f"split{workers}") for n in range(count)])
            await eventually(
                lambda: sink.handler.delivered >= count, timeout=300, what="delivery", interval=0.05
            )
            documents = await wait_for_results(web.url, [t for t in submitted.task_ids if t], timeout=60)
        finally:
            await redis.aclose()
            for process in [web, *processes]:
                process.stop()
    if {doc["status"] for doc in documents} != {"success"} or sink.handler.delivered != count:
        raise RuntimeError(f"split {workers}: {sink.handler.delivered} delivered of {count}")
    return count / (max(map(event_time, documents)) - submitted.started)


async def _consumers(redis: Redis, wanted: int) -> bool:
    return len(await WorkQueue(redis).consumers()) >= wanted


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument(
        "--pool", type=int, default=16, help="SMTP_POOL_SIZE, and the raw client's connections"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the all-in-one run; raw stacks to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailhub-bench-") as tmp, Sink(Path(tmp)) as sink:
        raw = await raw_client(sink, args.count, args.pool)
        fresh = await raw_client_rate(sink, args.count // 4, args.pool, fresh=True)
        mailhub, mailhub_cpu, bench_cpu = await mailhub_rate(
            sink, args.count, args.pool, Path(tmp), args.profile
        )
        split = {n: await split_rate(sink, args.count, args.pool, n, Path(tmp)) for n in (1, 2)}
        capacity = max(raw.rate, await raw_client_rate(sink, args.count, args.pool))
    reused = f"raw aiosmtplib, {args.pool} reused connections"
    print_table(
        "Delivery (aiosmtpd STARTTLS + AUTH sink)",
        [
            Row(
                f"mailhub: {args.count:,} mails submitted -> all success",
                mailhub,
                "mails/s",
                capacity,
                reused,
                "ratio >= 0.85",
            ),
            *(
                Row(
                    f"mailhub: web + {n} worker process{'es' * (n > 1)} (REDIS_URL)",
                    rate,
                    "mails/s",
                    capacity,
                    reused,
                )
                for n, rate in split.items()
            ),
            Row("raw aiosmtplib, new connection per mail", fresh, "mails/s", capacity, reused),
            Row(
                "CPU per mail: the mailhub process (accept, deliver, record, result polls; Valkey apart)",
                mailhub_cpu * 1e6,
                "µs",
                raw.client_cpu * 1e6,
                f"the raw client process sending pre-built mails, {args.pool} reused connections",
                "ratio <= 2.5",
            ),
            Row(
                "CPU per mail: this process, while mailhub delivers (sink, submits, result polls)",
                bench_cpu * 1e6,
                "µs",
                raw.sink_cpu * 1e6,
                "the sink, while the raw client sends",
            ),
        ],
        f"python -m bench.delivery --count {args.count} --pool {args.pool}",
    )
    if args.profile:
        summarize_profile(args.profile)
    return 0


if __name__ == "__main__":
    run(main)
