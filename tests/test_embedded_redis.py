"""The embedded Valkey: persistence, and no server outliving its parent."""

from __future__ import annotations

import asyncio
import sys

import redis

from mailhub.store.embedded_valkey import EmbeddedRedis, is_running
from tests.helpers import eventually


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


async def test_server_dies_with_a_killed_parent(tmp_path):
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        valkey_pid = int(await parent.stdout.readline())
        assert is_running(valkey_pid)
    finally:
        parent.kill()  # SIGKILL: no goodbye
        await parent.wait()
    await eventually(lambda: not is_running(valkey_pid), what="valkey-server to die with its parent")


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
