"""The no-resend window: how many mails a killed worker leaves to be sent twice.

    python -m bench.resend_window              # the cases below, about 1 minute
    python -m bench.resend_window --count 64   # mails queued per case

The sink (`bench.sink`) commits each mail the moment its data arrives and
answers 250 only `--data-delay` (0.3 s) later, as a server that writes the
mail to disk before it answers (Postfix) does. For each case, mails are
queued through `TaskStore.accept`, one `python run.py worker` starts, and once
the sink holds as many committed-but-unanswered mails as the case expects in
flight, the worker gets its signal. A second worker on the same Valkey then
finishes the queue (taking over the first one's entries after CLAIM_TIMEOUT).

Reported per case: sends waiting for their DATA reply at the signal, mails
delivered twice (same Message-ID), tasks that ended failed, the time the
signalled worker took to exit, and the time until every task was finished.
"""

from __future__ import annotations

import argparse
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bench.queued import outcomes, queue_mails
from bench.sink import Sink
from bench.support import Process, run, sink_env, start_worker, with_sink_and_valkey
from mailhub.settings import Settings
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from tests.helpers import eventually


@dataclass(frozen=True)
class Case:
    """One run: the signal, the worker's send slots, its SMTP_TIMEOUT."""

    signal: signal.Signals
    concurrency: int
    smtp_timeout: float

    @property
    def label(self) -> str:
        return (
            f"{self.signal.name}, WORKER_CONCURRENCY={self.concurrency}, SMTP_TIMEOUT={self.smtp_timeout:g}"
        )


CASES = [
    Case(signal.SIGKILL, 16, 2.0),
    Case(signal.SIGKILL, 4, 2.0),
    Case(signal.SIGKILL, 1, 2.0),
    # Shorter than the server's answer to DATA: every attempt times out after the server committed.
    Case(signal.SIGKILL, 16, 0.25),
    Case(signal.SIGTERM, 16, 2.0),
]


@dataclass
class Outcome:
    in_flight: int
    duplicates: int
    failed: int
    exit_seconds: float
    finish_seconds: float


async def measure_case(
    case: Case, args: argparse.Namespace, work: Path, sink: Sink, valkey: EmbeddedRedis
) -> Outcome:
    """Queue, start a worker, signal it with the expected sends in flight, let another finish."""
    count = max(args.count, 3 * case.concurrency)
    redis = connect(valkey.url)
    await redis.flushall()
    sink.handler.reset(data_delay=args.data_delay)
    store = TaskStore.from_settings(redis, Settings(max_attempts=3))
    task_ids = await queue_mails(store, count, f"window-{case.concurrency}-{case.signal.name}")
    env = sink_env(
        sink,
        work / "data",
        REDIS_URL=valkey.url,
        WORKER_CONCURRENCY=str(case.concurrency),
        SMTP_TIMEOUT=f"{case.smtp_timeout:g}",
        CLAIM_TIMEOUT=f"{max(1.0, 2 * case.smtp_timeout):g}",
        RETRY_BASE_DELAY="0.2",
    )
    first = start_worker(env, work / f"first-{case.concurrency}.log")
    try:
        await eventually(
            lambda: sink.handler.answering >= case.concurrency, timeout=30, what="sends waiting for DATA"
        )
        in_flight = sink.handler.answering
        signalled = time.monotonic()
        if case.signal is signal.SIGKILL:
            first.kill()
        else:
            first.stop()
        exit_seconds = time.monotonic() - signalled
    finally:
        first.kill()
    second = start_worker(env, work / f"second-{case.concurrency}.log")
    try:
        await eventually(lambda: _finished(store, task_ids), timeout=120, interval=0.2, what="every task")
        finish_seconds = time.monotonic() - signalled
    finally:
        _stop(second)
    documents = await outcomes(store, task_ids)
    await redis.aclose()
    duplicates = sum(n - 1 for n in sink.handler.message_ids.values() if n > 1)
    failed = sum(doc.get("status") == "failed" for doc in documents)
    return Outcome(in_flight, duplicates, failed, exit_seconds, finish_seconds)


async def _finished(store: TaskStore, task_ids: list[str]) -> bool:
    return all(doc.get("status") in ("success", "failed") for doc in await outcomes(store, task_ids))


def _stop(process: Process) -> None:
    process.stop(timeout=30)


async def measure(args: argparse.Namespace, work: Path, sink: Sink, valkey: EmbeddedRedis) -> int:
    print(
        f"resend_window: {args.count} mails per case (at least 3 per send slot); the sink commits "
        f"at the end of data and answers {args.data_delay:g} s later"
    )
    print("| case | waiting for the DATA reply at the signal | delivered twice | failed | exit | all done |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        outcome = await measure_case(case, args, work, sink, valkey)
        print(
            f"| {case.label} | {outcome.in_flight} | {outcome.duplicates} | {outcome.failed} "
            f"| {outcome.exit_seconds:.2f} s | {outcome.finish_seconds:.1f} s |"
        )
    return 0


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--data-delay", type=float, default=0.3)
    return await with_sink_and_valkey(measure, parser.parse_args())


if __name__ == "__main__":
    run(main)
