"""Who may open a live stream, on a real server: the per-client cap and the WebSocket Origin check.

Two loopback addresses (127.0.0.1 and 127.0.0.2) are two clients."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from mailhub.web.streams import SSE_PATH, WS_PATH
from tests.driver import TaskDriver
from tests.live_server import Live, serving
from tests.sse import SseReader

ALLOWED = "https://www.example.com"


@contextlib.asynccontextmanager
async def client_at(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from `address`."""
    connector = aiohttp.TCPConnector(limit=0, local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def open_streams(
    stack: contextlib.AsyncExitStack, session: aiohttp.ClientSession, live: Live, task_id: str, count: int
) -> None:
    """Open `count` streams, half SSE (each has had its first event), half WebSocket, kept open by `stack`."""
    for n in range(count):
        if n % 2:
            await stack.enter_async_context(session.ws_connect(live.url + WS_PATH))
            continue
        response = await stack.enter_async_context(
            session.get(live.url + SSE_PATH, params={"task_id": task_id})
        )
        assert response.status == 200, await response.text()
        first = await SseReader(response).next()
        assert first is not None and first.id == "1"


async def assert_refused(
    session: aiohttp.ClientSession, live: Live, task_id: str, status: int, code: str
) -> None:
    """Both kinds of stream are refused with `status`, before any stream starts."""
    async with session.get(live.url + SSE_PATH, params={"task_id": task_id}) as response:
        assert response.status == status
        assert (await response.json())["error"]["code"] == code
        assert response.headers["Connection"] == "close"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(live.url + WS_PATH)
    assert refused.value.status == status


async def test_one_client_holds_at_most_its_cap_of_streams_while_another_gets_its_own(settings, store):
    task_id = await TaskDriver(store).enqueue()  # stays pending (no worker): its streams stay open
    cap = settings.max_streams_per_client
    assert cap == 20  # the default
    async with (
        serving(settings) as live,
        client_at("127.0.0.1") as first,
        client_at("127.0.0.2") as second,
        contextlib.AsyncExitStack() as held,
    ):
        await open_streams(held, first, live, task_id, cap)
        await assert_refused(first, live, task_id, 429, "too_many_streams")
        assert live.hub.subscription_count == cap // 2  # the refused SSE stream never subscribed
        async with contextlib.AsyncExitStack() as other:
            await open_streams(other, second, live, task_id, cap)  # another address is not affected
            await assert_refused(second, live, task_id, 429, "too_many_streams")
        # A stream that ends gives its slot back.
        async with contextlib.AsyncExitStack() as again:
            await held.aclose()
            await open_streams(again, first, live, task_id, cap)


async def test_a_client_behind_a_trusted_proxy_is_counted_by_its_forwarded_address(settings, store):
    task_id = await TaskDriver(store).enqueue()
    proxied = replace(settings, max_streams_per_client=2, trusted_proxies=("127.0.0.1/32",))
    async with serving(proxied) as live, client_at("127.0.0.1") as proxy, contextlib.AsyncExitStack() as held:
        for visitor in ("203.0.113.7", "203.0.113.7", "198.51.100.1", "198.51.100.1"):
            response = await held.enter_async_context(
                proxy.get(
                    live.url + SSE_PATH, params={"task_id": task_id}, headers={"X-Forwarded-For": visitor}
                )
            )
            assert response.status == 200
        async with proxy.get(
            live.url + SSE_PATH, params={"task_id": task_id}, headers={"X-Forwarded-For": "203.0.113.7"}
        ) as response:
            assert response.status == 429


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": ALLOWED},
        {"Origin": "HTTPS://WWW.EXAMPLE.COM"},
        {"Origin": "same origin"},
        {"Origin": "https://mail.example.org", "Host": "mail.example.org"},
    ],
    ids=["no Origin (curl)", "CORS_ORIGINS", "case", "same origin", "same origin behind a TLS proxy"],
)
async def test_a_websocket_from_this_site_an_allowed_origin_or_no_page_is_accepted(settings, store, headers):
    task_id = await TaskDriver(store).enqueue()
    async with (
        serving(replace(settings, cors_origins=(ALLOWED,))) as live,
        client_at("127.0.0.1") as client,
    ):
        if headers.get("Origin") == "same origin":
            headers = {"Origin": live.url}
        async with client.ws_connect(live.url + WS_PATH, headers=headers) as ws:
            await ws.send_json({"subscribe": task_id})
            assert (await ws.receive_json(timeout=5))["seq"] == 1


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://127.0.0.1:1",
        "http://localhost",
        "https://www.example.com.evil",
    ],
)
async def test_a_websocket_from_another_origin_is_refused_before_the_upgrade(settings, store, origin):
    task_id = await TaskDriver(store).enqueue()
    strict = replace(settings, cors_origins=(ALLOWED,), max_streams_per_client=1)
    async with serving(strict) as live, client_at("127.0.0.1") as client:
        upgrade = {
            "Origin": origin,
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        async with client.get(live.url + WS_PATH, headers=upgrade) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "origin_not_allowed"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(live.url + WS_PATH, headers={"Origin": origin})
        assert refused.value.status == 403
        # The refusals held no stream slot: the client's one slot is free.
        async with client.ws_connect(live.url + WS_PATH, headers={"Origin": ALLOWED}) as ws:
            await ws.send_json({"subscribe": task_id})
            assert (await ws.receive_json(timeout=5))["seq"] == 1
