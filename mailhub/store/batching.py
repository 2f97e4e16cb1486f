"""Script calls made in the same event-loop turn go to Redis as one pipeline.

Under load, many submits (or a worker's many sends) run a Lua script at the
same moment. Alone, each call pays redis-py's whole cost of a round trip: a
connection from the pool, packing, a write, a wake-up for its reply. Sent
together they share it (measured at 64 concurrent callers: ~240 µs of CPU
per call alone, ~50-90 µs batched). A lone call still leaves at the next
loop turn: nothing waits for company.

Each call is still its own atomic script run; batching changes how calls
travel, not what they do.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

#: Calls one pipeline carries at most; more go out as further pipelines at once.
MAX_BATCH = 256


@dataclass(frozen=True)
class _Call:
    script: AsyncScript
    keys: Sequence[Any]
    args: Sequence[Any]
    future: asyncio.Future[Any]


class ScriptBatcher:
    """Runs scripts like `await script(keys=..., args=...)`, pipelining concurrent calls."""

    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._pending: list[_Call] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply, or the exception Redis or the connection raised."""
        loop = asyncio.get_running_loop()
        call = _Call(script, keys, args, loop.create_future())
        self._pending.append(call)
        if len(self._pending) == 1:
            loop.call_soon(self._send_pending)
        return await call.future

    def _send_pending(self) -> None:
        # A caller cancelled before its call left (a client gone) is not sent.
        pending = [call for call in self._pending if not call.future.done()]
        self._pending = []
        for start in range(0, len(pending), self.max_batch):
            flush = asyncio.create_task(self._send(pending[start : start + self.max_batch]))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for call in batch:
                    pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for call in batch:
                _settle(call.future, error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(batch, replies):
            if isinstance(reply, NoScriptError):
                # Redis restarted or its scripts were flushed: the script object loads it again.
                try:
                    reply = await call.script(keys=call.keys, args=call.args)
                except Exception as exc:
                    reply = exc
            if isinstance(reply, Exception):
                _settle(call.future, error=reply)
            else:
                _settle(call.future, result=reply)


def _settle(future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return  # its caller was cancelled
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    elif error is not None:
        future.set_exception(_own_copy(error))
    else:
        future.set_result(result)


def _own_copy(error: BaseException) -> BaseException:
    """A copy for one caller: each raise adds its own frames to the traceback."""
    try:
        return copy.copy(error)
    except Exception:
        return error
