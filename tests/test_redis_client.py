"""Clients from settings: one Redis URL, or the primary a real Sentinel names, with passwords."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import AuthenticationError, ConnectionError

from mailhub.check import Outcome, check_redis
from mailhub.settings import Settings
from mailhub.store import redis_client
from mailhub.store.embedded_valkey import EmbeddedRedis
from tests.redis_servers import MASTER, SentinelServer


@pytest.fixture
def guarded(tmp_path):
    """A primary and a Sentinel that both want a password."""
    with EmbeddedRedis(tmp_path / "primary", persist=True) as primary:
        with redis.Redis(port=primary.port) as client:  # after start-up: its readiness check has no password
            client.config_set("requirepass", "primary-pw")
        sentinel = SentinelServer(
            tmp_path / "sentinel", primary.port, password="sentinel-pw", primary_password="primary-pw"
        )
        sentinel.start()
        try:
            yield sentinel
        finally:
            sentinel.stop()


def sentinel_settings(sentinel: SentinelServer, **changes: str) -> Settings:
    values = dict(
        redis_sentinels=(("127.0.0.1", sentinel.port),),
        redis_sentinel_master=MASTER,
        redis_sentinel_password="sentinel-pw",
        redis_password="primary-pw",
    )
    return Settings(**{**values, **changes})


async def test_a_sentinel_client_reaches_the_primary_with_both_passwords(guarded):
    settings = sentinel_settings(guarded)
    client = redis_client.from_settings(settings)
    try:
        await client.set("mailhub-test", "through sentinel")
        assert await client.get("mailhub-test") == "through sentinel"
        assert (await client.info("server"))["tcp_port"] == guarded.primary_port
    finally:
        await client.aclose()
    [step, *_] = await check_redis(settings)
    assert step.outcome is Outcome.OK
    assert step.detail.startswith(f"primary 'mailhub' of the sentinels 127.0.0.1:{guarded.port} answers")
    assert "pw" not in step.detail


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"redis_sentinel_password": "wrong"}, ConnectionError),  # no sentinel answers: no primary
        ({"redis_password": "wrong"}, AuthenticationError),
    ],
)
async def test_a_wrong_password_is_an_error_not_a_hang(guarded, changes, error):
    client = redis_client.from_settings(sentinel_settings(guarded, **changes))
    try:
        with pytest.raises(error):
            await client.ping()
    finally:
        await client.aclose()


def test_describe_hides_the_password():
    settings = Settings(redis_url="redis://:s3cret@10.0.0.5:6379/0")
    assert redis_client.describe(settings) == "redis://:***@10.0.0.5:6379/0"
