"""SSE and WebSocket endpoints on a real aiohttp server (configured as run.py does),
a real Valkey and, where the worker runs, the real STARTTLS + AUTH SMTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import WSCloseCode
from aiohttp.http_writer import StreamWriter
from aiohttp_sse import EventSourceResponse

from mailhub.live.event import Event
from mailhub.settings import Settings
from mailhub.store import keys
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.web import appkeys
from mailhub.web.streams import SSE_BUFFER_LIMIT, SSE_PATH, WS_PATH, sse_frame
from tests.driver import TaskDriver
from tests.helpers import MAIL, enqueue, eventually, running_worker
from tests.live_server import Live, serving
from tests.smtp_server import Fault
from tests.sse import SseReader

UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


@contextlib.asynccontextmanager
async def stream(
    session: aiohttp.ClientSession, live: Live, task_id: str, **headers: str
) -> AsyncIterator[SseReader]:
    async with session.get(live.url + SSE_PATH, params={"task_id": task_id}, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        yield SseReader(response)


async def test_sse_sends_queued_attempt_retry_attempt_success_then_closes(
    live, session, store, settings, smtp
):
    task_id = await enqueue(store)
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    async with stream(session, live, task_id) as reader:
        first = await reader.next()
        async with running_worker(store, settings):
            rest = await asyncio.wait_for(reader.rest(), 10)
    messages = [first, *rest]
    assert [m.doc["event"] for m in messages] == ["queued", "attempt", "retry", "attempt", "success"]
    assert [m.doc["seq"] for m in messages] == [1, 2, 3, 4, 5]
    assert [m.id for m in messages] == ["1", "2", "3", "4", "5"]
    assert messages[-1].doc == {
        **messages[-1].doc,
        "status": "success",
        "attempts": 2,
        "task_id": task_id,
        "to": MAIL.to,
    }


async def test_a_late_subscriber_gets_the_final_state_at_once_and_the_stream_closes(live, session, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    await driver.run_to_success_after_one_retry()
    async with stream(session, live, task_id) as reader:
        messages = await asyncio.wait_for(reader.rest(), 5)
    assert [(m.id, m.doc["status"]) for m in messages] == [("5", "success")]
    await eventually(lambda: live.hub.subscription_count == 0, what="the subscription to close")


@pytest.mark.parametrize(
    ("query", "status"), [({"task_id": UNKNOWN}, 404), ({"task_id": "nope"}, 422), ({}, 422)]
)
async def test_bad_task_ids_get_json_errors_before_any_stream(live, session, query, status):
    async with session.get(live.url + SSE_PATH, params=query) as response:
        assert response.status == status
        assert response.content_type == "application/json"
        assert (await response.json())["error"]["code"] in ("not_found", "validation_failed")
    assert live.hub.subscription_count == 0


@pytest.mark.parametrize(("moves_before_read", "expected"), [(2, ["3", "4", "5"]), (4, ["5"])])
async def test_transitions_while_connecting_are_neither_lost_nor_repeated(
    live, session, store, monkeypatch, moves_before_read, expected
):
    """Transitions land between the stream's subscribe and its read of the state."""
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    app_store = live.app[appkeys.STORE]
    read_state, entered, release = app_store.result, asyncio.Event(), asyncio.Event()

    async def gated_read(task_id: str) -> str | None:
        entered.set()
        await release.wait()
        return await read_state(task_id)

    monkeypatch.setattr(app_store, "result", gated_read)
    moves = [driver.begin_attempt, driver.retry, driver.begin_attempt, driver.succeed]
    connecting = asyncio.create_task(session.get(live.url + SSE_PATH, params={"task_id": task_id}))
    await asyncio.wait_for(entered.wait(), 5)
    for move in moves[:moves_before_read]:
        await move()
    release.set()
    async with await asyncio.wait_for(connecting, 5) as response:
        reader = SseReader(response)
        first = await reader.next()
        assert first is not None
        for move in moves[moves_before_read:]:
            await move()
        messages = [first, *await asyncio.wait_for(reader.rest(), 5)]
    assert [m.id for m in messages] == expected


async def test_streams_racing_the_real_worker_are_complete_and_without_repeats(
    live, session, store, settings, smtp
):
    smtp.handler.faults.extend([Fault.reply_data("451 4.3.0 busy")] * 10)

    async def follow(task_id: str) -> tuple[str, list[int]]:
        async with stream(session, live, task_id) as reader:
            return task_id, [m.doc["seq"] for m in await reader.rest()]

    async with running_worker(store, settings):
        followers = []
        for _ in range(20):
            task_id = await enqueue(store)
            followers.append(asyncio.create_task(follow(task_id)))
        results = await asyncio.wait_for(asyncio.gather(*followers), 20)
    for task_id, seqs in results:
        assert seqs == list(range(seqs[0], seqs[-1] + 1))
        # Up to the task's terminal transition (how many 451s it met depends on timing).
        final = json.loads(await store.result(task_id))
        assert final["status"] in ("success", "failed") and seqs[-1] == final["seq"]


async def test_last_event_id_resumes_without_repeats(live, session, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    await driver.begin_attempt()
    await driver.retry()
    async with stream(session, live, task_id, **{"Last-Event-ID": "2"}) as reader:
        first = await reader.next()
        await driver.begin_attempt()
        await driver.succeed()
        messages = [first, *await asyncio.wait_for(reader.rest(), 5)]
    assert [m.id for m in messages] == ["3", "4", "5"]
    async with stream(session, live, task_id, **{"Last-Event-ID": "4"}) as reader:
        assert [m.id for m in await asyncio.wait_for(reader.rest(), 5)] == ["5"]
    # Everything seen: 204 stops a browser's EventSource from reconnecting.
    async with session.get(
        live.url + SSE_PATH, params={"task_id": task_id}, headers={"Last-Event-ID": "5"}
    ) as response:
        assert response.status == 204


async def test_keepalive_comments_come_at_the_configured_interval(settings, session, store):
    task_id = await TaskDriver(store).enqueue()
    async with serving(replace(settings, sse_keepalive=0.05)) as live:
        async with stream(session, live, task_id) as reader:
            first = await reader.next()
            assert first is not None and first.id == "1"
            line = await asyncio.wait_for(reader.response.content.readline(), 5)
            assert line == b": ping\r\n"


async def test_200_clients_on_one_task_get_the_same_events_over_one_pubsub_connection(
    session, store, settings, smtp, redis
):
    task_id = await enqueue(store)
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    # All 200 come from one address here: lift the per-client cap.
    async with serving(replace(settings, max_streams_per_client=200)) as live:
        async with contextlib.AsyncExitStack() as stack:
            readers = await asyncio.gather(
                *(stack.enter_async_context(stream(session, live, task_id)) for _ in range(200))
            )
            firsts = await asyncio.gather(*(reader.next() for reader in readers))
            assert live.hub.subscription_count == 200
            assert len(await redis.client_list(_type="pubsub")) == 1
            async with running_worker(store, settings):
                rests = await asyncio.wait_for(asyncio.gather(*(r.rest() for r in readers)), 20)
            assert len(await redis.client_list(_type="pubsub")) == 1
        sequences = {tuple((m.id, m.data) for m in [first, *rest]) for first, rest in zip(firsts, rests)}
        [sequence] = sequences
        assert [seq for seq, _ in sequence] == ["1", "2", "3", "4", "5"]
        await eventually(lambda: live.hub.subscription_count == 0, what="every subscription to close")


async def test_clients_that_drop_leave_no_subscription_or_task_behind(settings, session, store):
    task_id = await TaskDriver(store).enqueue()
    async with serving(replace(settings, max_streams_per_client=100)) as live:
        async with stream(session, live, task_id) as reader:
            first = await reader.next()
            assert first is not None and first.id == "1"
        # The hub's listener lingers after the last client by design: it is in the baseline.
        await eventually(lambda: live.hub.subscription_count == 0, what="the first client to go")
        baseline = len(asyncio.all_tasks())
        responses = [await session.get(live.url + SSE_PATH, params={"task_id": task_id}) for _ in range(100)]
        for response in responses:
            first = await SseReader(response).next()
            assert first is not None and first.id == "1"
        assert live.hub.subscription_count == 100
        for response in responses:
            response.close()  # drops the connection, as a closed browser tab does
        await eventually(lambda: live.hub.subscription_count == 0, what="the subscriptions to go")
        assert live.hub.task_count == 0
        await eventually(lambda: len(asyncio.all_tasks()) <= baseline, what="the server tasks to end")


async def test_shutdown_closes_open_streams_promptly(settings, session, store):
    task_id = await TaskDriver(store).enqueue()
    async with contextlib.AsyncExitStack() as stack:
        live = await stack.enter_async_context(serving(settings))
        readers = [await stack.enter_async_context(stream(session, live, task_id)) for _ in range(5)]
        for reader in readers:
            await reader.next()
        ws = await stack.enter_async_context(session.ws_connect(live.url + WS_PATH))
        await ws.send_json({"subscribe": task_id})
        assert (await ws.receive_json(timeout=5))["seq"] == 1
        started = time.monotonic()
        await live.runner.cleanup()
        assert time.monotonic() - started < 3.0
        for reader in readers:
            assert await asyncio.wait_for(reader.rest(), 5) == []
        closing = await asyncio.wait_for(ws.receive(), 5)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, WSCloseCode.GOING_AWAY)
        stack.pop_all()  # the runner is already cleaned up


async def test_a_stream_opened_while_shutting_down_is_ended_at_once(live, session, store):
    task_id = await TaskDriver(store).enqueue()
    # Shutdown has begun (on_shutdown ran) while this handler was still on its way in.
    await live.app[appkeys.STREAMS].close_all()
    async with stream(session, live, task_id) as reader:
        await asyncio.wait_for(reader.rest(), 5)  # ended, not left open until a timeout
    async with session.ws_connect(live.url + WS_PATH) as ws:
        closing = await asyncio.wait_for(ws.receive(), 5)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, WSCloseCode.GOING_AWAY)


async def ws_messages(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict]:
    return [await ws.receive_json(timeout=5) for _ in range(count)]


async def test_ws_follows_two_tasks_on_one_socket(live, session, store):
    first, second = TaskDriver(store), TaskDriver(store)
    await first.enqueue()
    await second.enqueue()
    async with session.ws_connect(live.url + WS_PATH) as ws:
        await ws.send_json({"subscribe": first.task_id})
        await ws.send_json({"subscribe": second.task_id})
        received = await ws_messages(ws, 2)
        await first.begin_attempt()
        await first.succeed()
        await second.begin_attempt()
        await second.fail()
        received += await ws_messages(ws, 4)
        assert live.hub.subscription_count == 0  # both reached a final state
    by_task = {
        t: [(m["seq"], m["event"]) for m in received if m["task_id"] == t]
        for t in (first.task_id, second.task_id)
    }
    assert by_task[first.task_id] == [(1, "queued"), (2, "attempt"), (3, "success")]
    assert by_task[second.task_id] == [(1, "queued"), (2, "attempt"), (3, "failed")]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("{not json", "Not valid JSON."),
        ("[]", 'Send {"subscribe": "<task_id>"} or {"unsubscribe": "<task_id>"}.'),
        ('{"follow": "x"}', 'Send {"subscribe": "<task_id>"} or {"unsubscribe": "<task_id>"}.'),
        ('{"subscribe": 5}', "Not a valid task id (a UUID)."),
        ('{"subscribe": "abc"}', "Not a valid task id (a UUID)."),
    ],
)
async def test_ws_bad_messages_get_an_error_and_the_socket_stays_open(live, session, store, message, error):
    task_id = await TaskDriver(store).enqueue()
    async with session.ws_connect(live.url + WS_PATH) as ws:
        await ws.send_str(message)
        assert await ws.receive_json(timeout=5) == {"error": {"code": "bad_request", "message": error}}
        await ws.send_json({"subscribe": task_id})
        assert (await ws.receive_json(timeout=5))["seq"] == 1


async def test_ws_unknown_task_and_binary_frames_get_errors(live, session):
    async with session.ws_connect(live.url + WS_PATH) as ws:
        await ws.send_json({"subscribe": UNKNOWN})
        error = (await ws.receive_json(timeout=5))["error"]
        assert (error["code"], error["task_id"]) == ("not_found", UNKNOWN)
        await ws.send_bytes(b"\x00")
        assert (await ws.receive_json(timeout=5))["error"]["code"] == "bad_request"
        assert not ws.closed
    assert live.hub.subscription_count == 0


async def test_ws_unsubscribe_stops_the_events_of_that_task(live, session, store):
    first, second = TaskDriver(store), TaskDriver(store)
    await first.enqueue()
    await second.enqueue()
    async with session.ws_connect(live.url + WS_PATH) as ws:
        await ws.send_json({"subscribe": first.task_id})
        assert (await ws.receive_json(timeout=5))["task_id"] == first.task_id
        await ws.send_json({"unsubscribe": first.task_id})
        await eventually(lambda: live.hub.subscription_count == 0, what="the unsubscribe")
        await first.begin_attempt()
        await ws.send_json({"subscribe": second.task_id})
        # The next message is the second task's: nothing of the first came in between.
        assert (await ws.receive_json(timeout=5))["task_id"] == second.task_id
    await eventually(lambda: live.hub.subscription_count == 0, what="the socket's subscriptions to go")


async def test_with_redis_down_sse_answers_503_and_ws_an_error_message(tmp_path, settings, session):
    valkey = EmbeddedRedis(tmp_path, persist=False)
    valkey.start()
    try:
        async with serving(replace(settings, redis_url=valkey.url)) as live:
            valkey.stop()
            async with session.get(live.url + SSE_PATH, params={"task_id": UNKNOWN}) as response:
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "unavailable"
            async with session.ws_connect(live.url + WS_PATH) as ws:
                await ws.send_json({"subscribe": UNKNOWN})
                error = (await ws.receive_json(timeout=5))["error"]
                assert (error["code"], error["task_id"]) == ("unavailable", UNKNOWN)
                assert not ws.closed
    finally:
        valkey.stop()


async def test_an_allowed_origin_may_follow_a_task_over_sse(settings, session, store):
    task_id = await TaskDriver(store).enqueue()
    origin = "https://www.example.com"
    async with serving(replace(settings, cors_origins=(origin,))) as live:
        async with session.get(
            live.url + SSE_PATH, params={"task_id": task_id}, headers={"Origin": origin}
        ) as response:
            assert response.status == 200
            assert response.headers.get("Access-Control-Allow-Origin") == origin


@pytest.mark.parametrize("data", ['{"task_id": "t", "seq": 7}', "one\ntwo\r\nthree\rfour", ""])
async def test_events_are_framed_once_as_aiohttp_sse_and_aiohttp_would_write_them(data):
    """The hub's frame of an event is byte for byte what `EventSourceResponse.send`
    (and, on HTTP/1.1, aiohttp's chunked writer) would have put on the wire."""
    sent: list[bytes] = []

    class Capture(EventSourceResponse):
        async def write(self, data: bytes | bytearray | memoryview) -> None:
            sent.append(bytes(data))

    await Capture().send(data, id="7")
    event = Event("t", 7, "pending", data)
    assert sse_frame(event, False) == sent[0]

    wire = bytearray()
    transport = SimpleNamespace(is_closing=lambda: False, write=wire.extend)
    writer = StreamWriter(SimpleNamespace(transport=transport), asyncio.get_running_loop())
    writer.enable_chunking()
    await writer.write(sent[0])
    assert sse_frame(event, True) == wire


async def raw_get(
    live: Live, task_id: str, version: str = "1.1", rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare HTTP client: the SSE request sent, nothing read yet."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    port = int(live.url.rsplit(":", 1)[1])
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {SSE_PATH}?task_id={task_id} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    return reader, writer


async def test_an_http_1_0_client_gets_the_events_unchunked_until_the_server_closes(live, store):
    driver = TaskDriver(store)
    task_id = await driver.enqueue()
    reader, writer = await raw_get(live, task_id, version="1.0")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await driver.begin_attempt()
        await driver.succeed()
        body = first + await asyncio.wait_for(reader.read(), 5)  # until the server closes
    finally:
        writer.close()
    stored = [json.loads(await store.result(task_id) or "{}")]
    blocks = body.decode().split("\r\n\r\n")
    assert blocks[-1] == ""
    assert [block.split("\r\n")[0] for block in blocks[:-1]] == ["id: 1", "id: 2", "id: 3"]
    assert json.loads(blocks[-2].split("\r\n")[1].removeprefix("data: ")) == stored[0]


async def test_a_client_that_stops_reading_is_dropped_while_the_others_get_every_event(
    live, session, store, redis, caplog
):
    caplog.set_level("INFO", logger="mailhub.web.streams")
    task_id = await TaskDriver(store).enqueue()
    slow_reader, slow_writer = await raw_get(live, task_id, rcvbuf=4096)
    try:
        await asyncio.wait_for(slow_reader.readuntil(b"id: 1"), 5)  # then it reads no more
        async with stream(session, live, task_id) as reader:
            first = await reader.next()
            assert first is not None and first.id == "1"
            assert live.hub.subscription_count == 2
            pad = "x" * 100_000  # big events, to fill the slow client's socket buffers soon
            seq = 1
            while live.hub.subscription_count == 2:
                seq += 1
                assert seq * len(pad) < 100 * 2**20, "the slow client was never dropped"
                doc = json.dumps(
                    {"task_id": task_id, "seq": seq, "status": "pending", "event": "attempt", "pad": pad}
                )
                # Stored, then published, as the Lua scripts do.
                await redis.hset(keys.task(task_id), "doc", doc)
                await redis.publish(keys.EVENTS, doc)
                message = await asyncio.wait_for(reader.next(), 5)
                assert message is not None and message.id == str(seq)  # kept up with every one
            assert seq * len(pad) > SSE_BUFFER_LIMIT
            assert "SSE client too slow, disconnected" in caplog.text
            done = json.dumps({"task_id": task_id, "seq": seq + 1, "status": "success"})
            await redis.hset(keys.task(task_id), "doc", done)
            await redis.publish(keys.EVENTS, done)
            assert [m.id for m in await asyncio.wait_for(reader.rest(), 5)] == [str(seq + 1)]
        # The slow client's connection was aborted: what it had not read yet, then the end.
        with contextlib.suppress(ConnectionResetError):
            while await asyncio.wait_for(slow_reader.read(2**20), 5):
                pass
    finally:
        slow_writer.close()
    await eventually(lambda: live.hub.subscription_count == 0, what="every subscription to close")


async def subscriber_gauge(session: aiohttp.ClientSession, live: Live) -> float:
    """`mailhub_stream_subscribers` as /metrics reports it."""
    async with session.get(live.url + "/metrics") as response:
        text = await response.text()
    [value] = [
        line.split()[1] for line in text.splitlines() if line.startswith("mailhub_stream_subscribers ")
    ]
    return float(value)


async def answered(ws: aiohttp.ClientWebSocketResponse) -> list[dict]:
    """Send a marker (a subscribe the server refuses) and read until its error: the server
    handles a socket's messages in order, so every message before it has been handled."""
    await ws.send_json({"subscribe": UNKNOWN})
    messages = []
    while True:
        message = await ws.receive_json(timeout=30)
        if message.get("error", {}).get("task_id") == UNKNOWN:
            return messages
        messages.append(message)


async def test_a_ws_subscribe_unsubscribe_flood_leaves_no_subscription_behind(live, session, store):
    task_id = await TaskDriver(store).enqueue()
    subscribe, unsubscribe = json.dumps({"subscribe": task_id}), json.dumps({"unsubscribe": task_id})
    async with session.ws_connect(live.url + WS_PATH) as ws:
        for _ in range(10_000):
            await ws.send_str(subscribe)
            await ws.send_str(unsubscribe)
        messages = await answered(ws)
        # Each subscribe may have sent the state before its unsubscribe stopped it.
        assert all(m["seq"] == 1 for m in messages) and len(messages) <= 10_000
        assert await subscriber_gauge(session, live) == 0
    assert await subscriber_gauge(session, live) == 0
    assert live.hub.subscription_count == live.hub.task_count == 0


async def test_the_ws_cap_of_100_tasks_holds_under_a_flood(live, session, store):
    task_ids = [await TaskDriver(store).enqueue() for _ in range(101)]
    async with session.ws_connect(live.url + WS_PATH) as ws:
        for task_id in task_ids[:100]:
            await ws.send_json({"subscribe": task_id})
        for n in range(3_000):  # free a slot and take it again, twice, 3,000 times
            for action in ("unsubscribe", "subscribe", "unsubscribe", "subscribe"):
                await ws.send_json({action: task_ids[n % 100]})
        await ws.send_json({"subscribe": task_ids[100]})
        messages = await answered(ws)
        [refused] = [m["error"] for m in messages if "error" in m]
        assert (refused["task_id"], refused["message"]) == (
            task_ids[100],
            "At most 100 tasks per connection.",
        )
        assert await subscriber_gauge(session, live) == 100
    await eventually(lambda: live.hub.subscription_count == 0, what="the socket's subscriptions to go")
    assert await subscriber_gauge(session, live) == 0
