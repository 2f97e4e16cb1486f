"""Shared parts of the benchmarks: processes stopped by PID, the API client, the table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.sink import Sink
from mailhub.store.embedded_valkey import EmbeddedRedis
from tests.helpers import free_port, smtp_env
from tests.processes import clean_env

ROOT = Path(__file__).resolve().parent.parent
SUBMIT_PATH = "/api/v1/email/received"
RESULT_PATH = "/api/v1/email/result"


def sink_env(sink: Sink, data_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a mailhub that delivers to `sink` and keeps its data in `data_dir`."""
    settings = smtp_env(
        sink, MAIL_FROM="Bench <noreply@example.com>", DATA_DIR=str(data_dir), LOG_LEVEL="warning"
    )
    return clean_env(**{**settings, **extra})


class Process:
    """A child process with its output in `log_path`; stopped by its PID, never by name."""

    def __init__(self, args: list[str], *, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.pid = self.popen.pid

    def kill(self) -> None:
        """SIGKILL: no goodbye, as a crash or the OOM killer would do it."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.popen.wait(30)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class MailhubServer(Process):
    """`python run.py [command] --port P`; `url` answers once `wait_ready()` returns."""

    def __init__(self, *command: str, env: dict[str, str], log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [sys.executable, str(ROOT / "run.py"), *command, "--port", str(self.port)],
            env=env,
            log_path=log_dir / f"mailhub-{self.port}.log",
        )

    def wait_ready(self, timeout: float = 30.0) -> MailhubServer:
        wait_for_http(self.url + "/openapi.json", self, timeout)
        return self


def start_worker(env: dict[str, str], log_path: Path) -> Process:
    """`python run.py worker` with `env`, as a child process."""
    return Process([sys.executable, str(ROOT / "run.py"), "worker"], env=env, log_path=log_path)


def wait_for_http(url: str, process: Process, timeout: float) -> None:
    """Poll `url` until it answers; fail at once if `process` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.popen.args!r} exited:\n{process.log[-3000:]}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(url, timeout=1):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready in {timeout}s:\n{process.log[-3000:]}")
        time.sleep(0.05)


P = TypeVar("P", bound=Process)


@contextlib.contextmanager
def running(process: P) -> Iterator[P]:
    """Stop `process` on the way out, whatever happened."""
    try:
        yield process
    finally:
        process.stop()


def mail(n: int, tag: str) -> dict[str, str]:
    """The n-th request body: a unique subject with non-ASCII text and inner spaces."""
    return {
        "to": f"user{n % 50}@example.com",
        "subject": f"{tag} {n:05d} — 안녕하세요  {n}",
        "body": "{username}님, 문의가 접수되었습니다. Request " + str(n),
        "username": "홍길동",
    }


@dataclass
class Submitted:
    """The outcome of posting bodies: task ids by index (None: refused or lost)."""

    started: float
    finished: float
    task_ids: list[str | None]
    errors: list[str] = field(default_factory=list)


async def submit_all(
    url: str, bodies: list[dict[str, str]], *, concurrency: int = 64, key_prefix: str = "bench"
) -> Submitted:
    """POST every body with `concurrency` requests in flight; an Idempotency-Key per body."""
    task_ids: list[str | None] = [None] * len(bodies)
    errors: list[str] = []
    next_index = iter(range(len(bodies)))

    async def lane(session: aiohttp.ClientSession) -> None:
        for i in next_index:
            headers = {"Idempotency-Key": f"{key_prefix}-{i}"}
            try:
                async with session.post(url + SUBMIT_PATH, json=bodies[i], headers=headers) as r:
                    document = await r.json()
                    if r.status == 200:
                        task_ids[i] = document["task_id"]
                    else:
                        errors.append(f"{r.status} {document}")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    started = time.time()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
    return Submitted(started, time.time(), task_ids, errors)


async def fetch_results(url: str, task_ids: list[str], *, concurrency: int = 32) -> list[dict[str, Any]]:
    """The result document of every task, in order."""
    documents: list[dict[str, Any]] = [{}] * len(task_ids)
    next_index = iter(range(len(task_ids)))

    async def lane(session: aiohttp.ClientSession) -> None:
        for i in next_index:
            async with session.get(url + RESULT_PATH, params={"task_id": task_ids[i]}) as r:
                documents[i] = await r.json()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
    return documents


async def wait_for_results(
    url: str,
    task_ids: list[str],
    *,
    timeout: float,
    done: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Fetch the results until every one is terminal (or `done`), bounded by `timeout`."""
    done = done or (lambda doc: doc.get("status") in ("success", "failed"))
    deadline = time.monotonic() + timeout
    while True:
        documents = await fetch_results(url, task_ids)
        if all(done(doc) for doc in documents):
            return documents
        if time.monotonic() > deadline:
            waiting = sum(not done(doc) for doc in documents)
            raise TimeoutError(f"{waiting} tasks not done after {timeout:g}s")
        await asyncio.sleep(0.5)


def event_time(document: dict[str, Any]) -> float:
    """Epoch seconds of the document's last transition (its `at`)."""
    return datetime.fromisoformat(document["at"].replace("Z", "+00:00")).timestamp()


async def with_sink_and_valkey(
    measure: Callable[[argparse.Namespace, Path, Sink, EmbeddedRedis], Awaitable[int]],
    args: argparse.Namespace,
    *,
    persist: bool = False,
) -> int:
    """`measure(args, work directory, sink, valkey)`, everything in one temporary directory."""
    with (
        tempfile.TemporaryDirectory(prefix="mailhub-bench-") as tmp,
        Sink(Path(tmp)) as sink,
        EmbeddedRedis(Path(tmp) / "valkey", persist=persist) as valkey,
    ):
        return await measure(args, Path(tmp), sink, valkey)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run a benchmark's async main and exit with its code."""
    sys.exit(asyncio.run(main()))


@dataclass
class Row:
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    goal: str = ""

    @property
    def ratio(self) -> str:
        return f"{self.value / self.baseline:.2f}" if self.baseline else "-"

    @property
    def verdict(self) -> str:
        """✓ or ✗ for a goal of the form `ratio >= 0.9`, `<= 600 bytes` or `0`; "" for any other."""
        match = _GOAL.fullmatch(self.goal.strip())
        if match is None:
            return ""
        subject, operator, bound = match["subject"], match["op"] or "==", float(match["bound"])
        if subject and not self.baseline:
            return ""
        measured = round(self.value / self.baseline, 2) if subject else self.value
        met = {"==": measured == bound, ">=": measured >= bound, "<=": measured <= bound}[operator]
        return "✓" if met else "✗"


#: A goal `Row.verdict` can check: on the ratio or on the value itself, with an optional unit.
_GOAL = re.compile(r"(?P<subject>ratio )?(?P<op>>=|<=)? ?(?P<bound>\d+(?:\.\d+)?)(?: [^\d]+)?")


def print_table(title: str, rows: list[Row], command: str) -> None:
    """The results as a markdown table, with the command that produced them."""
    print(f"\n### {title}\n")
    print("| figure | value | baseline | ratio | goal |")
    print("|---|---:|---|---:|---|")
    for row in rows:
        baseline = (
            f"{_fmt(row.baseline)} {row.unit} ({row.baseline_name})"
            if row.baseline is not None
            else row.baseline_name or "-"
        )
        print(
            f"| {row.figure} | {_fmt(row.value)} {row.unit} | {baseline} | {row.ratio} "
            f"| {' '.join(filter(None, (row.goal, row.verdict))) or '-'} |"
        )
    print(f"\ncommand: `{command}`")


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
