"""The enqueue baseline: the least a submit can do, as its own process.

    python -m bench.baseline_app --port P --redis-url URL [--bare]

POST /api/v1/email/received parses the JSON body and runs one Redis
pipeline: HSET of 5 fields, XADD, EXPIRE. With `--bare` it only reads the
body and answers fixed JSON: the ceiling of aiohttp itself on this machine.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis

from mailhub.store.redis_client import connect

REDIS = web.AppKey("redis", Redis)
#: The stream the baseline queues to.
QUEUE = "bench:queue"


async def baseline_queued(redis: Redis) -> int:
    """Entries the baseline queued."""
    return int(await redis.xlen(QUEUE))


async def submit(request: web.Request) -> web.Response:
    data = await request.json()
    task_id = str(uuid.uuid4())
    key = f"bench:task:{task_id}"
    async with request.app[REDIS].pipeline(transaction=False) as pipe:
        pipe.hset(
            key,
            mapping={
                "to": data["to"],
                "subject": data["subject"],
                "body": data["body"],
                "username": data.get("username", ""),
                "state": "queued",
            },
        )
        pipe.xadd(QUEUE, {"task_id": task_id})
        pipe.expire(key, 7 * 24 * 3600)
        await pipe.execute()
    return web.json_response({"task_id": task_id, "status": "queued"})


async def bare(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"task_id": "00000000-0000-0000-0000-000000000000", "status": "queued"})


async def ready(request: web.Request) -> web.Response:
    """What the benchmarks poll to know the process listens."""
    return web.json_response({})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--bare", action="store_true")
    args = parser.parse_args()
    app = web.Application()

    async def redis_context(app: web.Application) -> AsyncIterator[None]:
        app[REDIS] = connect(args.redis_url)
        yield
        await app[REDIS].aclose()

    app.cleanup_ctx.append(redis_context)
    app.router.add_post("/api/v1/email/received", bare if args.bare else submit)
    app.router.add_get("/openapi.json", ready)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
