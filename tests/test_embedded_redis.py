"""The embedded Valkey: persistence, and no server outliving its parent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import redis

from mailhub.store.embedded_valkey import EmbeddedRedis, is_running


def _wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_data_survives_a_restart(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        redis.Redis(port=server.port).set("kept", "yes")
    with EmbeddedRedis(tmp_path) as server:
        assert redis.Redis(port=server.port).get("kept") == b"yes"


CHILD = """
import sys, time
from mailhub.store.embedded_valkey import EmbeddedRedis, is_running
server = EmbeddedRedis(sys.argv[1])
server.start()
print(server.process.pid, flush=True)
time.sleep(60)
"""


def test_server_dies_with_a_killed_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        valkey_pid = int(parent.stdout.readline())
        assert is_running(valkey_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    _wait_until(lambda: not is_running(valkey_pid))


def test_leftover_server_on_the_data_dir_is_stopped(tmp_path):
    # A server whose parent vanished without the parent-death signal (e.g. another OS).
    leftover = EmbeddedRedis(tmp_path)
    leftover.start()
    old_pid = leftover.process.pid
    try:
        with EmbeddedRedis(tmp_path) as server:
            assert not is_running(old_pid)
            assert redis.Redis(port=server.port).ping()
    finally:
        leftover.stop()
