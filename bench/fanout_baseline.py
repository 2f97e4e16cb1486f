"""The fan-out baseline: a bare aiohttp SSE server on one Redis subscription.

    python -m bench.fanout_baseline --port P --redis-url URL

Serves `GET /api/v1/email/events?task_id=ID` with the same bytes as mailhub's
SSE endpoint (the stored result document, then each newer published document
of the task as `id: seq` / `data: doc`, until success or failed), and nothing
else: no Last-Event-ID, no liveness checks, keep-alive pings, resync, send
timeouts or CORS. It holds at most 2 Redis connections: the one pub/sub
subscription and one for reading stored states. `GET /ready` answers once the
subscription is live. Used by `bench.fanout_10k` as the floor a fan-out
server on aiohttp can reach on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis

from mailhub.store import keys
from mailhub.store.tasks import TaskStore

TERMINAL = frozenset({"success", "failed"})
REDIS: web.AppKey[Redis] = web.AppKey("redis", Redis)
TOPICS: web.AppKey[dict[str, set[asyncio.Queue[tuple[int, str, str]]]]] = web.AppKey("topics", dict)
SUBSCRIBED: web.AppKey[asyncio.Event] = web.AppKey("subscribed", asyncio.Event)
REDIS_URL: web.AppKey[str] = web.AppKey("redis_url", str)
#: Reads a task's stored state (its result document), as mailhub renders it.
STORE: web.AppKey[TaskStore] = web.AppKey("store", TaskStore)


async def listen(redis: Redis, subscribed: Callable[[], object], received: Callable[[str], object]) -> None:
    """Subscribe to the events channel; call `subscribed()` once it is live, then
    `received(data)` for each published message, until cancelled. Also used by
    `bench.fanout`'s reference subscriber."""
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.EVENTS)
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            if message["type"] == "subscribe":
                subscribed()
            elif message["type"] == "message":
                received(message["data"])


async def _listen(app: web.Application) -> None:
    topics = app[TOPICS]

    def dispatch(data: str) -> None:
        doc = json.loads(data)
        for queue in topics.get(doc["task_id"], ()):
            queue.put_nowait((doc["seq"], doc["status"], data))

    await listen(app[REDIS], app[SUBSCRIBED].set, dispatch)


async def _context(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = Redis.from_pool(
        BlockingConnectionPool.from_url(
            app[REDIS_URL], max_connections=2, timeout=None, decode_responses=True
        )
    )
    app[STORE] = TaskStore(app[REDIS], retention=3600, max_attempts=3, message_id_domain="example.com")
    app[TOPICS] = {}
    app[SUBSCRIBED] = asyncio.Event()
    listener = asyncio.create_task(_listen(app))
    yield
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await app[REDIS].aclose()


async def events(request: web.Request) -> web.StreamResponse:
    task_id = request.query["task_id"]
    topics = request.app[TOPICS]
    queue: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
    topics.setdefault(task_id, set()).add(queue)  # subscribe, then read the stored state
    try:
        stored = await request.app[STORE].result(task_id)
        if stored is None:
            raise web.HTTPNotFound()
        doc = json.loads(stored)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        item, last = (doc["seq"], doc["status"], stored), 0
        while True:
            seq, status, data = item
            if seq > last:
                last = seq
                await response.write(f"id: {seq}\r\ndata: {data}\r\n\r\n".encode())
            if status in TERMINAL:
                return response
            item = await queue.get()
    finally:
        subs = topics[task_id]
        subs.discard(queue)
        if not subs:
            del topics[task_id]


async def ready(request: web.Request) -> web.Response:
    if not request.app[SUBSCRIBED].is_set():
        raise web.HTTPServiceUnavailable()
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    app = web.Application()
    app[REDIS_URL] = args.redis_url
    app.cleanup_ctx.append(_context)
    app.router.add_get("/api/v1/email/events", events)
    app.router.add_get("/ready", ready)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
