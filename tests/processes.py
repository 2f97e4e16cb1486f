"""mailhub as a real process (`python run.py ...`), started and stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
#: Every variable mailhub reads (by prefix): a developer's shell may carry some;
#: a process a test (or a benchmark) starts goes without them.
_CLEARED = (
    "SMTP_",
    "REDIS_",
    "MAIL_FROM",
    "HOST",
    "PORT",
    "METRICS_PORT",
    "DATA_DIR",
    "MAX_",
    "RETRY_",
    "WORKER_",
    "CLAIM_TIMEOUT",
    "SHUTDOWN_GRACE",
    "RESULT_RETENTION",
    "LOG_",
    "SSE_KEEPALIVE",
    "DEMO_RECIPIENT",
    "ALLOWED_",
    "API_KEYS",
    "RATE_LIMIT",
    "TRUSTED_PROXIES",
    "CORS_ORIGINS",
    "HONEYPOT_FIELD",
    "FORMS_FILE",
    "CAPTCHA_",
    "TURNSTILE_",
    "HCAPTCHA_",
    "RECAPTCHA_",
    "WEBHOOK_",
    "ALERT_",
    "ADMIN_TOKEN",
)


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid`, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any mailhub setting, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    return {**base, **env}


class MailhubProcess:
    """`python run.py <command>` in `cwd`; `url` is set when the web part listens."""

    def __init__(
        self,
        *args: str,
        cwd: Path,
        env: dict[str, str],
        web: bool = True,
        file_limit: tuple[int, int] | None = None,
    ):
        """`file_limit`: the (soft, hard) RLIMIT_NOFILE the process starts with."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.web = web
        self.log_path = cwd / f"mailhub-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), *args, "--port", str(self.port)],
                cwd=cwd,
                env=clean_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if file_limit is None else lambda: _limit_files(file_limit),
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> MailhubProcess:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mailhub exited with {self.process.returncode}:\n{self.log}")
            if self.web and _answers(self.url + "/openapi.json"):
                return self
            if not self.web and "started" in self.log:
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"mailhub not ready in {timeout}s:\n{self.log}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def __enter__(self) -> MailhubProcess:
        try:
            return self.wait_ready()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _limit_files(limit: tuple[int, int]) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, limit)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


@contextlib.asynccontextmanager
async def mailhub_serving(*args: str, cwd: Path, env: dict[str, str]) -> AsyncIterator[MailhubProcess]:
    """`python run.py ...`, ready; stopped with SIGTERM on exit, for async tests. It waits in a
    thread, so what the test serves on its own event loop (a webhook receiver) keeps answering."""
    process = MailhubProcess(*args, cwd=cwd, env=env)
    try:
        yield await asyncio.to_thread(process.wait_ready)
    finally:
        await asyncio.to_thread(process.stop)
        process.__exit__()
