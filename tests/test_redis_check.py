"""The Redis mailhub is given, checked at start-up and by `run.py check`: eviction, persistence, version."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from mailhub.check import Outcome, report, run_checks
from mailhub.store import redis_check
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_check import Level
from mailhub.store.redis_client import connect
from tests.helpers import settings_for, smtp_env
from tests.processes import ROOT, MailhubProcess, clean_env

NO_PERSISTENCE = (
    "no append-only file, no snapshots and no replicas: a restart of Redis loses every queued mail"
)


@pytest.fixture
def evicting_valkey(tmp_path) -> Iterator[EmbeddedRedis]:
    """A Valkey set up as a cache: it deletes the least recently used keys when full."""
    args = ["--maxmemory-policy", "allkeys-lru"]
    with EmbeddedRedis(tmp_path / "lru", persist=False, args=args) as server:
        yield server


def test_an_evicting_redis_stops_start_up_with_one_line(tmp_path, evicting_valkey, smtp):
    env = clean_env(**smtp_env(smtp, REDIS_URL=evicting_valkey.url))
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "web"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("mailhub: ")]
    assert line == (
        "mailhub: maxmemory-policy is allkeys-lru: when its memory is full Redis deletes keys, "
        "queued mail among them; set maxmemory-policy noeviction, or REDIS_ALLOW_EVICTION=1 to start anyway"
    )
    assert "Traceback" not in done.stderr


def test_redis_allow_eviction_starts_with_warnings(tmp_path, evicting_valkey, smtp):
    env = smtp_env(smtp, REDIS_URL=evicting_valkey.url, REDIS_ALLOW_EVICTION="1")
    with MailhubProcess("worker", cwd=tmp_path, env=env, web=False) as worker:
        log = worker.log
    assert "WARNING mailhub.store.redis_check: Redis: maxmemory-policy is allkeys-lru" in log
    assert "(started anyway: REDIS_ALLOW_EVICTION=1)" in log
    assert f"WARNING mailhub.store.redis_check: Redis: {NO_PERSISTENCE}" in log


async def test_check_fails_an_evicting_redis_and_warns_of_lost_persistence(evicting_valkey, smtp):
    steps = await run_checks(settings_for(smtp, redis_url=evicting_valkey.url))
    by_name = {step.name: step for step in steps}
    assert by_name["Redis"].outcome is Outcome.OK
    assert by_name["eviction"].outcome is Outcome.FAIL
    assert "allkeys-lru" in by_name["eviction"].detail
    assert by_name["persistence"].outcome is Outcome.WARN
    assert by_name["persistence"].detail == f"{NO_PERSISTENCE}; set appendonly yes"
    assert report(steps, sys.stdout) == 1


async def test_without_config_the_snapshots_are_unknown_not_refused(tmp_path):
    args = ["--rename-command", "CONFIG", ""]  # as managed Redis services do
    with EmbeddedRedis(tmp_path / "managed", persist=False, args=args) as server:
        redis = connect(server.url)
        try:
            findings = await redis_check.inspect(redis)
            unread = await redis_check.eviction_finding(redis, {}, allow=False)
        finally:
            await redis.aclose()
    levels = {finding.topic: finding.level for finding in findings}
    assert levels == {"version": Level.OK, "eviction": Level.OK, "persistence": Level.WARN}
    assert "snapshots unknown (CONFIG is disabled)" in findings[2].text
    # A Redis whose INFO does not say its policy either: a warning, not a refusal.
    assert unread.level is Level.WARN
    assert "maxmemory-policy could not be read" in unread.text


@pytest.mark.parametrize(
    ("info", "level", "words"),
    [
        ({"redis_version": "6.0.16"}, Level.REFUSE, "Redis 6.0.16 is too old: mailhub needs Redis 6.2"),
        ({"redis_version": "6.2.0"}, Level.OK, "Redis 6.2.0"),
        ({"redis_version": "7.2.4", "valkey_version": "8.0.1"}, Level.OK, "Valkey 8.0.1"),
        ({}, Level.WARN, "its version could not be read"),
    ],
)
def test_the_version_must_have_every_command_used(info, level, words):
    finding = redis_check.version_finding(info)
    assert finding.level is level
    assert words in finding.text
