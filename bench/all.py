"""Every benchmark, one after the other, in one run: bench/README.md's results table.

    python -m bench.all [--out bench-results.md] [--backlog-count 100000] [--only NAME ...]

Each benchmark runs as its own process (so one's leftovers cannot slow the
next), with its default options; the report starts with the commit, the
machine and its load, every goal a benchmark checked (✓ met, ✗ not) in one
table, then each benchmark's table and its wall time. A
benchmark that fails is reported as failed and the others still run; the
exit code is then 1. Postfix's smtp-sink benchmark is skipped when
`/usr/sbin/smtp-sink` is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.delivery_postfix import SMTP_SINK
from bench.support import ROOT
from tests.processes import clean_env

BENCHMARKS: dict[str, list[str]] = {
    "enqueue": ["bench.enqueue"],
    # The same below saturation: latency when the server is not the bottleneck.
    "enqueue_16": ["bench.enqueue", "--connections", "16"],
    "delivery": ["bench.delivery"],
    "delivery_postfix": ["bench.delivery_postfix"],
    "retry_storm": ["bench.retry_storm"],
    "refused_bodies": ["bench.refused_bodies"],
    "fanout": ["bench.fanout"],
    "fanout_10k": ["bench.fanout_10k"],
    "backlog": ["bench.backlog"],
    "acceptance_2000": ["bench.acceptance_2000"],
    "acceptance_2000_kill": ["bench.acceptance_2000", "--kill"],
    "resend_window": ["bench.resend_window"],
}


def header() -> str:
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True
        ).stdout.strip()
        or "unknown"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, text=True, capture_output=True
    ).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"# mailhub benchmarks, one run\n\n"
        f"- started {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}"
        f"{' (with uncommitted changes)' if dirty else ''}\n"
        f"- {os.cpu_count()} CPUs, load average before: {load}\n"
    )


def summary(goals: list[str]) -> str:
    """Every checked goal of the run in one table, ahead of the benchmarks' own tables."""
    head = "| benchmark | figure | value | baseline | ratio | goal |\n|---|---|---:|---|---:|---|\n"
    return "\n## Goals, from this run\n\n" + head + "\n".join(goals) + "\n" if goals else ""


def goal_rows(name: str, output: str) -> list[str]:
    """The table rows of a benchmark's output that carry a checked goal (✓ or ✗), named after it."""
    return [f"| {name} {line}" for line in output.splitlines() if line.endswith((" ✓ |", " ✗ |"))]


def run_one(name: str, args: list[str], extra: list[str], report: list[str], goals: list[str]) -> bool:
    command = [sys.executable, "-m", *args, *extra]
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=clean_env(), text=True, capture_output=True, timeout=3600)
    seconds = time.monotonic() - started
    report.append(f"\n## {name} ({seconds:.0f} s{', FAILED' if done.returncode else ''})\n")
    report.append(done.stdout.strip() + "\n")
    goals += goal_rows(name, done.stdout)
    if done.returncode:
        report.append(f"\n```\n{done.stderr.strip()[-3000:]}\n```\n")
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.md")
    parser.add_argument("--backlog-count", type=int, default=100_000)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    args = parser.parse_args()
    report: list[str] = []
    goals: list[str] = []
    ok = True
    for name, bench_args in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        if name == "delivery_postfix" and not shutil.which(SMTP_SINK):
            report.append(f"\n## {name}: skipped ({SMTP_SINK} missing: apt-get install postfix)\n")
            continue
        extra = ["--count", str(args.backlog_count)] if name == "backlog" else []
        ok = run_one(name, bench_args, extra, report, goals) and ok
        args.out.write_text(header() + summary(goals) + "".join(report))
    print(header() + summary(goals) + "".join(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
