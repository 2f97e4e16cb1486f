"""Real parts for every test: an embedded Valkey, a TLS + AUTH SMTP server, the app."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from mailhub.delivery.sender import SmtpSender
from mailhub.delivery.worker import Worker
from mailhub.settings import Settings
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from mailhub.web.app import create_app
from tests.smtp_server import SmtpServer, TlsMaterial, make_tls_material

SMTP_USER, SMTP_PASS = "mailhub", "secret"


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("valkey"), persist=False) as server:
        yield server


@pytest.fixture
async def redis(valkey: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = connect(valkey.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trust_test_ca(tls_material: TlsMaterial, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the system trust store of this process trust the test CA, as an owner would."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_material.ca_file))
    return tls_material.ca_file


@pytest.fixture
def smtp(tls_material: TlsMaterial, trust_test_ca: Path) -> Iterator[SmtpServer]:
    """A STARTTLS + AUTH server; tests queue faults on `smtp.handler.faults`."""
    with SmtpServer(tls_material, tls="starttls", user=SMTP_USER, password=SMTP_PASS) as server:
        yield server


@pytest.fixture
def settings(valkey: EmbeddedRedis, smtp: SmtpServer) -> Settings:
    return settings_for(smtp, redis_url=valkey.url)


def settings_for(smtp: SmtpServer, **overrides: Any) -> Settings:
    """Settings that deliver to `smtp`, with quick retries for tests."""
    values: dict[str, Any] = dict(
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        smtp_tls=smtp.tls,
        smtp_user=smtp.user or "",
        smtp_pass=smtp.password or "",
        mail_from="Site <noreply@example.com>",
        retry_base_delay=0.02,
        retry_max_delay=0.1,
        smtp_timeout=5.0,
        allowed_recipients=("*",),
        rate_limit="off",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def store(redis: Redis, settings: Settings) -> TaskStore:
    return TaskStore.from_settings(redis, settings)


@asynccontextmanager
async def running_worker(store: TaskStore, settings: Settings, **options: Any) -> AsyncIterator[Worker]:
    sender = SmtpSender(settings)
    worker = Worker(
        store,
        sender,
        concurrency=options.pop("concurrency", 8),
        retry_base_delay=settings.retry_base_delay,
        retry_max_delay=settings.retry_max_delay,
        poll_interval=0.01,
        **options,
    )
    try:
        async with worker.running(grace=5.0):
            yield worker
    finally:
        await sender.close()


@pytest.fixture
async def worker(store: TaskStore, settings: Settings) -> AsyncIterator[Worker]:
    async with running_worker(store, settings) as running:
        yield running


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Any:
    return await aiohttp_client(create_app(settings))


async def wait_for_result(
    store: TaskStore,
    task_id: str,
    *,
    timeout: float = 10.0,
    statuses: tuple[str, ...] = ("success", "failed"),
) -> dict[str, Any]:
    """Poll the task's result document until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        raw = await store.result(task_id)
        document = json.loads(raw) if raw else None
        if document and document["status"] in statuses:
            return document
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} still {document} after {timeout}s")
        await asyncio.sleep(0.01)


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
