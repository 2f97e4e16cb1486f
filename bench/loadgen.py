"""A POST load generator in its own process, for machines without wrk.

    python -m bench.loadgen URL --connections 64 --duration 10

Keeps `connections` requests in flight for `duration` seconds, each with
a new subject and Idempotency-Key, and prints one JSON line in the same
shape as the wrk script: requests, duration_us, non2xx, errors, p50_us, p99_us.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import time

import aiohttp


async def load(url: str, connections: int, duration: float) -> dict[str, int]:
    latencies: list[float] = []
    non2xx = errors = 0
    counter = itertools.count()
    prefix = f"py{os.getpid()}"
    deadline = time.perf_counter() + duration

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal non2xx, errors
        while time.perf_counter() < deadline:
            n = next(counter)
            body = {
                "to": "user@example.com",
                "subject": f"Hello {n}",
                "body": "{username}님 안녕하세요!",
                "username": "홍길동",
            }
            started = time.perf_counter()
            try:
                async with session.post(url, json=body, headers={"Idempotency-Key": f"{prefix}-{n}"}) as r:
                    await r.read()
                    non2xx += not 200 <= r.status < 300
            except (TimeoutError, aiohttp.ClientError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(lane(session) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1e6) if latencies else 0

    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "non2xx": non2xx,
        "errors": errors,
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(load(args.url, args.connections, args.duration))))


if __name__ == "__main__":
    main()
