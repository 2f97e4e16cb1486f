"""Watching a benchmark's processes from outside: CPU time and py-spy profiles."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

from bench.support import ROOT, Process
from tests.processes import clean_env

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def py_spy(pid: int, output: Path, duration: float | None = None) -> Process:
    """Start sampling `pid` (CPU-busy stacks only, 250/s, without pausing it) into `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    py_spy_bin = Path(sys.executable).with_name("py-spy")
    return Process(
        [
            str(py_spy_bin),
            "record",
            "--pid",
            str(pid),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
            *(["--duration", str(round(duration))] if duration else []),
        ],
        env=clean_env(),
        log_path=output.with_suffix(".log"),
    )


def stop_py_spy(profiler: Process) -> None:
    """SIGINT: py-spy writes its samples out, then exits."""
    if profiler.popen.poll() is None:
        os.kill(profiler.pid, signal.SIGINT)
    try:
        profiler.popen.wait(30)
    except subprocess.TimeoutExpired:
        profiler.stop()


def summarize_profile(path: Path, top: int = 12) -> None:
    """Print the frames where py-spy's samples were: by own time and including callees."""
    if not path.exists():
        print(f"(no profile at {path})")
        return
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        own[_short(frames[-1])] += n
        for frame in {short for short in map(_short, frames) if not short.endswith(_OUTER)}:
            inclusive[frame] += n
    print(f"\n#### py-spy {path.name}: {total} samples at 250/s while busy (~{total / 250:.1f} CPU s)\n")
    for title, counter in (("own time", own), ("including callees", inclusive)):
        print(f"| {title} | samples | share |\n|---|---:|---:|")
        for frame, n in counter.most_common(top):
            print(f"| `{frame}` | {n} | {n / max(total, 1):.0%} |")
        print()


#: Frames every sample has (the event loop running the process): left out of "including callees".
_OUTER = tuple(
    f"{name})"
    for name in (
        "asyncio/runners.py",
        "asyncio/base_events.py",
        "asyncio/events.py",
        "mailhub/cli.py",
        "run.py",
    )
)


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`: one row per function."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name
