"""Acceptance: 2,000 mails through the real server, each delivered exactly once.

    python -m bench.acceptance_2000           # one server, all 2,000 must go through untouched
    python -m bench.acceptance_2000 --kill    # SIGKILL the server mid-run, start it again

`python run.py` runs as a child process (embedded Valkey in a temporary
DATA_DIR, a free port) and delivers to an aiosmtpd STARTTLS + AUTH sink in
this process, trusting the sink's CA through SSL_CERT_FILE. Mails are posted
64 at a time. The sink counts every Message-ID and Subject it receives.

Normal run: every result `success` with attempts == 1, every mail received
exactly once, with its subject unaltered.

--kill: after ~300 deliveries the server gets SIGKILL, then is started again
on the same DATA_DIR (the append-only file keeps the queue), with
CLAIM_TIMEOUT=5 and SMTP_TIMEOUT=2. Posts that failed because of the kill are
sent again, with the same Idempotency-Key, to the new server. Every accepted
mail must end `success` (0 lost, 0 stuck), and the mails received twice must
be no more than the attempts the kill interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sink import Sink
from bench.support import (
    MailhubServer,
    Submitted,
    event_time,
    mail,
    run,
    sink_env,
    submit_all,
    wait_for_results,
)
from tests.helpers import eventually

COUNT, KILL_AFTER = 2000, 300


def check_normal(bodies: list[dict[str, str]], documents: list[dict[str, Any]], sink: Sink) -> list[str]:
    """What is wrong with a run without faults (nothing, ideally)."""
    problems = []
    if (statuses := Counter(doc["status"] for doc in documents)) != {"success": len(bodies)}:
        problems.append(f"statuses {dict(statuses)}")
    if (attempts := Counter(doc["attempts"] for doc in documents)) != {1: len(bodies)}:
        problems.append(f"attempts {dict(attempts)}")
    if set(sink.handler.message_ids.values()) != {1} or len(sink.handler.message_ids) != len(bodies):
        problems.append(
            f"{sink.handler.delivered} deliveries of {len(sink.handler.message_ids)} "
            f"Message-IDs for {len(bodies)} mails"
        )
    if sink.handler.subjects != Counter(body["subject"] for body in bodies):
        problems.append("subjects received differ from the subjects sent")
    return problems


async def normal(sink: Sink, work: Path, count: int) -> int:
    bodies = [mail(n, "acceptance") for n in range(count)]
    server = MailhubServer(env=sink_env(sink, work / "data"), log_dir=work)
    try:
        server.wait_ready()
        submitted = await submit_all(server.url, bodies)
        if submitted.errors:
            raise RuntimeError(f"{len(submitted.errors)} submits failed: {submitted.errors[:3]}")
        task_ids = [t for t in submitted.task_ids if t]
        await eventually(
            lambda: sink.handler.delivered >= count, timeout=300, what="deliveries", interval=0.05
        )
        documents = await wait_for_results(server.url, task_ids, timeout=60)
    finally:
        server.stop()
    wall = max(map(event_time, documents)) - submitted.started
    problems = check_normal(bodies, documents, sink)
    print(f"acceptance_2000: {count} mails posted at 64 concurrent requests")
    print(f"  posting took            {submitted.finished - submitted.started:.2f} s")
    print(f"  wall time to all success {wall:.2f} s ({count / wall:.0f} mails/s)")
    print(
        f"  delivered               {sink.handler.delivered} "
        f"({len(sink.handler.message_ids)} distinct Message-IDs, "
        f"{len(sink.handler.subjects)} distinct subjects, unaltered: "
        f"{sink.handler.subjects == Counter(b['subject'] for b in bodies)})"
    )
    print(f"  attempts                {dict(Counter(doc['attempts'] for doc in documents))}")
    print(f"  SMTP logins at the sink {sink.auth_successes}")
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 1 if problems else 0


async def post_until_killed(
    server: MailhubServer, bodies: list[dict[str, str]], sink: Sink
) -> tuple[Submitted, int]:
    """Post everything while a watcher SIGKILLs the server after KILL_AFTER deliveries."""

    async def killer() -> int:
        await eventually(
            lambda: sink.handler.delivered >= KILL_AFTER,
            timeout=300,
            what="deliveries before the kill",
            interval=0.002,
        )
        server.kill()
        return sink.handler.delivered

    kill = asyncio.create_task(killer())
    submitted = await submit_all(server.url, bodies)
    return submitted, await kill


@dataclass
class KillRun:
    """What happened around the kill, for the report."""

    delivered_at_kill: int
    accepted_before: int
    reposted: int
    refused_again: int
    recovery: float = 0.0
    stuck: str = ""


async def with_kill(sink: Sink, work: Path, count: int) -> int:
    bodies = [mail(n, "kill") for n in range(count)]
    env = sink_env(sink, work / "data", CLAIM_TIMEOUT="5", SMTP_TIMEOUT="2")
    first = MailhubServer(env=env, log_dir=work)
    try:
        submitted, delivered_at_kill = await post_until_killed(first.wait_ready(), bodies, sink)
    finally:
        first.stop()
    task_ids = list(submitted.task_ids)
    repost = [i for i, t in enumerate(task_ids) if t is None]
    restarted_at = time.time()
    second = MailhubServer(env=env, log_dir=work)
    documents: list[dict[str, Any]] = []
    try:
        again = await submit_all(second.wait_ready().url, [bodies[i] for i in repost])
        for i, task_id in zip(repost, again.task_ids):
            task_ids[i] = task_id
        outcome = KillRun(delivered_at_kill, count - len(repost), len(repost), len(again.errors))
        accepted = [(i, t) for i, t in enumerate(task_ids) if t]
        try:
            documents = await wait_for_results(
                second.url,
                [t for _, t in accepted],
                timeout=180,
                done=lambda doc: doc.get("status") == "success",
            )
            outcome.recovery = max(map(event_time, documents)) - restarted_at
        except TimeoutError as exc:
            outcome.stuck = str(exc)
    finally:
        second.stop()
    return report_kill(bodies, accepted, documents, sink, outcome)


def report_kill(
    bodies: list[dict[str, str]],
    accepted: list[tuple[int, str]],
    documents: list[dict[str, Any]],
    sink: Sink,
    run: KillRun,
) -> int:
    """Print the --kill figures; 0 if nothing was lost, stuck or sent more than the kill allows."""
    handler = sink.handler
    lost = [i for i, _ in accepted if handler.subjects[bodies[i]["subject"]] == 0]
    duplicates = sum(n - 1 for n in handler.message_ids.values() if n > 1)
    interrupted = sum(doc["attempts"] >= 2 for doc in documents)
    queued_twice = sum(len(ids) > 1 for ids in handler.ids_by_subject.values())
    problems = []
    if run.stuck or len(documents) != len(accepted):
        problems.append(f"stuck: {run.stuck}")
    if lost:
        problems.append(f"{len(lost)} accepted mails never arrived")
    if duplicates > interrupted:
        problems.append(f"{duplicates} duplicates but only {interrupted} interrupted attempts")
    print(f"acceptance_2000 --kill: {len(bodies)} mails posted at 64 concurrent requests")
    for label, value in [
        ("deliveries at the SIGKILL", run.delivered_at_kill),
        ("accepted before the kill", run.accepted_before),
        ("posts failed by the kill, re-posted", f"{run.reposted} (refused again: {run.refused_again})"),
        ("accepted in all", len(accepted)),
        ("ended success", sum(doc["status"] == "success" for doc in documents)),
        ("lost", len(lost)),
        ("stuck", len(accepted) - len(documents) if run.stuck else 0),
        ("attempts interrupted by the kill", interrupted),
        ("delivered twice (same Message-ID)", duplicates),
        ("queued twice (reply lost in the kill)", queued_twice),
        ("restart to last success", f"{run.recovery:.2f} s"),
    ]:
        print(f"  {label:<40} {value}")
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 1 if problems else 0


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kill", action="store_true", help="SIGKILL the server mid-run")
    parser.add_argument("--count", type=int, default=COUNT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailhub-acceptance-") as tmp, Sink(Path(tmp)) as sink:
        if args.kill:
            return await with_kill(sink, Path(tmp), args.count)
        return await normal(sink, Path(tmp), args.count)


if __name__ == "__main__":
    run(main)
