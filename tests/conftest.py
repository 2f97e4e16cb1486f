"""Real parts for every test: an embedded Valkey, a TLS + AUTH SMTP server, the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright
from redis.asyncio import Redis

from mailhub.delivery.worker import Worker
from mailhub.settings import Settings
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.redis_client import connect
from mailhub.store.tasks import TaskStore
from mailhub.web.app import create_app
from tests.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT
from tests.helpers import running_worker, settings_for, worker_for
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


@pytest.fixture
def store(redis: Redis, settings: Settings) -> TaskStore:
    return TaskStore.from_settings(redis, settings)


@pytest.fixture
def drain(store: TaskStore, settings: Settings) -> Callable[..., Awaitable[None]]:
    """`await drain()` runs a worker until every queued task is success or failed.

    Keyword arguments change the worker's settings (Settings fields).
    """

    async def run(timeout: float = 10.0, **changes: Any) -> None:
        async with worker_for(store, settings, **changes) as worker:
            await worker.drain(timeout=timeout)

    return run


@pytest.fixture
async def worker(store: TaskStore, settings: Settings) -> AsyncIterator[Worker]:
    async with running_worker(store, settings) as running:
        yield running


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> Any:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def make_client(aiohttp_client: Any, settings: Settings, redis: Redis) -> Callable[..., Awaitable[Any]]:
    """`await make_client(**changes)`: a test client of an app with these settings changed."""

    # `redis` flushes: rate-limit counters are per client and window, whatever the amount.
    async def make(**changes: Any) -> Any:
        return await aiohttp_client(create_app(replace(settings, **changes)))

    return make


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        yield await context.new_page()
    finally:
        await context.close()
