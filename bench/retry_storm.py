"""Retry storm: 200 mails, each answered 451 once, drained with the default backoff.

    python -m bench.retry_storm [--count 200]

One `python run.py` delivering to the aiosmtpd sink (STARTTLS + AUTH), with
the default RETRY_BASE_DELAY (2 s: the first retry comes 1-2 s later). First
the same number of mails with no fault (the baseline), then the storm: the
sink answers 451 to the first DATA of every Message-ID. Each figure is the
time from the first submit to the last `success`; the storm must end with
every mail delivered exactly once, on its second attempt.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

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

#: The longest first retry delay with the default RETRY_BASE_DELAY of 2 s (jitter: 1-2 s).
FIRST_RETRY_MAX = 2.0


async def drain(server: MailhubServer, sink: Sink, count: int, tag: str, *, storm: bool) -> float:
    """Seconds from the first submit to the last `success`; every mail checked."""
    sink.handler.reset(refuse_first=storm)
    bodies = [mail(n, tag) for n in range(count)]
    submitted = await submit_all(server.url, bodies, key_prefix=tag)
    task_ids = [t for t in submitted.task_ids if t]
    if submitted.errors or len(task_ids) != count:
        raise RuntimeError(f"{len(submitted.errors)} submits failed: {submitted.errors[:3]}")
    documents = await wait_for_results(server.url, task_ids, timeout=120)
    attempts = {doc.get("attempts") for doc in documents}
    expected = 2 if storm else 1
    delivered_once = set(sink.handler.subjects.values()) == {1}
    if (
        {doc["status"] for doc in documents} != {"success"}
        or attempts != {expected}
        or not delivered_once
        or len(sink.handler.subjects) != count
        or sorted(sink.handler.subjects) != sorted(b["subject"] for b in bodies)
    ):
        raise RuntimeError(f"{tag}: attempts {attempts}, {sink.handler.delivered} delivered")
    return max(map(event_time, documents)) - submitted.started


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailhub-bench-") as tmp, Sink(Path(tmp)) as sink:
        env = sink_env(sink, Path(tmp) / "data")
        with running(MailhubServer(env=env, log_dir=Path(tmp))) as server:
            server.wait_ready()
            clean = await drain(server, sink, args.count, "clean", storm=False)
            storm = await drain(server, sink, args.count, "storm", storm=True)
    ideal = clean + FIRST_RETRY_MAX
    print_table(
        f"Retry storm ({args.count} mails, each answered 451 once)",
        [
            Row(
                "time to drain the storm",
                storm,
                "s",
                ideal,
                f"no-fault drain + {FIRST_RETRY_MAX:g} s first backoff",
                "<= 10 s (lower is better)",
            ),
            Row("time to drain without faults", clean, "s"),
        ],
        f"python -m bench.retry_storm --count {args.count}",
    )
    return 0


if __name__ == "__main__":
    run(main)
