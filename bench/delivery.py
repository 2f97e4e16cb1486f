"""Delivery: 2,000 mails through the API until all are `success`, against the sink's capacity.

    python -m bench.delivery [--count 2000] [--pool 8]

The sink is aiosmtpd with STARTTLS and AUTH, in this process. Its capacity is
measured in the same run by a bare aiosmtplib client process with as many
reused connections as mailhub's pool (best of a run before and one after
mailhub's), and, for reference, with a new connection per mail. mailhub runs
as `python run.py` (web, worker and embedded Valkey in one process); its
figure is mails divided by the time from the first submit to the last
`success` transition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.sink import Sink
from bench.support import (MailhubServer, Row, clean_env, event_time, mail, print_table, run,
                           running, sink_env, submit_all, wait_for_results, wait_until)


async def raw_client_rate(sink: Sink, count: int, connections: int, *, fresh: bool = False) -> float:
    """Mails per second a bare aiosmtplib client process gets through `sink`."""
    sink.handler.reset()
    args = [sys.executable, "-m", "bench.smtp_client", "--port", str(sink.port),
            "--ca", str(sink.ca_file), "--count", str(count), "--connections", str(connections)]
    done = await asyncio.to_thread(subprocess.run, args + ["--fresh"] * fresh, env=clean_env(),
                                   capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"smtp_client failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    if sink.handler.delivered != count:
        raise RuntimeError(f"sink got {sink.handler.delivered} of {count} raw mails")
    return count / result["seconds"]


async def mailhub_rate(sink: Sink, count: int, pool: int, work: Path) -> float:
    """Mails per second from the first submit to the last `success`, all checked delivered."""
    sink.handler.reset()
    env = sink_env(sink, work / "data", SMTP_POOL_SIZE=str(pool))
    with running(MailhubServer(env=env, log_dir=work)) as server:
        server.wait_ready()
        submitted = await submit_all(server.url, [mail(n, "delivery") for n in range(count)])
        if submitted.errors:
            raise RuntimeError(f"{len(submitted.errors)} submits failed: {submitted.errors[:3]}")
        await wait_until(lambda: sink.handler.delivered >= count, 300, "delivery")
        task_ids = [t for t in submitted.task_ids if t]
        documents = await wait_for_results(server.url, task_ids, timeout=60)
    statuses = {doc["status"] for doc in documents}
    if statuses != {"success"} or sink.handler.delivered != count:
        raise RuntimeError(f"statuses {statuses}, {sink.handler.delivered} delivered of {count}")
    return count / (max(map(event_time, documents)) - submitted.started)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=8, help="SMTP_POOL_SIZE, and the raw client's connections")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailhub-bench-") as tmp, Sink(Path(tmp)) as sink:
        capacity = await raw_client_rate(sink, args.count, args.pool)
        fresh = await raw_client_rate(sink, args.count // 4, args.pool, fresh=True)
        mailhub = await mailhub_rate(sink, args.count, args.pool, Path(tmp))
        capacity = max(capacity, await raw_client_rate(sink, args.count, args.pool))
    reused = f"raw aiosmtplib, {args.pool} reused connections"
    print_table("Delivery (aiosmtpd STARTTLS + AUTH sink)", [
        Row(f"mailhub: {args.count:,} mails submitted -> all success", mailhub, "mails/s",
            capacity, reused, "ratio >= 0.85"),
        Row("raw aiosmtplib, new connection per mail", fresh, "mails/s", capacity, reused),
    ], f"python -m bench.delivery --count {args.count} --pool {args.pool}")
    return 0


if __name__ == "__main__":
    run(main)
