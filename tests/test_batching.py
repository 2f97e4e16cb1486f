"""ScriptBatcher: concurrent script calls share a pipeline, each gets its own answer."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from mailhub.store.batching import ScriptBatcher
from mailhub.store.redis_client import connect
from tests.helpers import free_port

#: Echoes its argument after counting the call; refuses "bad".
ECHO = """
redis.call('INCR', KEYS[1])
if ARGV[1] == 'bad' then return redis.error_reply('refused ' .. ARGV[1]) end
return ARGV[1]
"""


async def test_concurrent_calls_each_get_their_own_reply_over_one_connection(valkey):
    # Its own pool on a database of its own, so Redis can count the pool's connections.
    client = connect(valkey.url.rpartition("/")[0] + "/7")
    try:
        await client.flushall()
        batcher = ScriptBatcher(client)
        echo = client.register_script(ECHO)
        replies = await asyncio.gather(*(batcher.run(echo, ["calls"], [f"n{i}"]) for i in range(200)))
        assert replies == [f"n{i}" for i in range(200)]
        assert await client.get("calls") == "200"
        # One at a time, 200 concurrent calls would have opened many connections.
        assert [c["db"] for c in await client.client_list()].count("7") == 1
    finally:
        await client.aclose()


async def test_a_refused_call_fails_alone(redis):
    batcher = ScriptBatcher(redis)
    echo = redis.register_script(ECHO)
    replies = await asyncio.gather(
        *(batcher.run(echo, ["calls"], [word]) for word in ("a", "bad", "c")), return_exceptions=True
    )
    assert replies[0] == "a" and replies[2] == "c"
    assert isinstance(replies[1], ResponseError) and "refused bad" in str(replies[1])


async def test_scripts_flushed_from_redis_are_loaded_again(redis):
    batcher = ScriptBatcher(redis)
    echo = redis.register_script(ECHO)
    assert await batcher.run(echo, ["calls"], ["first"]) == "first"
    await redis.script_flush()
    replies = await asyncio.gather(*(batcher.run(echo, ["calls"], [f"n{i}"]) for i in range(5)))
    assert replies == [f"n{i}" for i in range(5)]


async def test_every_caller_gets_the_connection_error():
    client = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        batcher = ScriptBatcher(client)
        echo = client.register_script(ECHO)
        replies = await asyncio.gather(
            *(batcher.run(echo, ["calls"], ["x"]) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(reply, RedisConnectionError) for reply in replies)
        assert len({id(reply) for reply in replies}) == 3  # each its own traceback
    finally:
        await client.aclose()


async def test_a_caller_cancelled_before_sending_is_not_sent_and_disturbs_no_one(redis):
    batcher = ScriptBatcher(redis)
    echo = redis.register_script(ECHO)
    calls = [asyncio.create_task(batcher.run(echo, ["calls"], [f"n{i}"])) for i in range(3)]
    await asyncio.sleep(0)  # all three are waiting in the batch
    calls[1].cancel()
    assert await calls[0] == "n0" and await calls[2] == "n2"
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    assert await redis.get("calls") == "2"  # cancelled before it left: not sent


async def test_single_commands_share_the_pipeline_and_get_parsed_replies(redis):
    batcher = ScriptBatcher(redis)
    echo = redis.register_script(ECHO)
    await redis.hset("h", mapping={"a": "1", "b": "2"})
    got = await asyncio.gather(
        batcher.command("HGET", "h", "a"),
        batcher.run(echo, ["calls"], ["x"]),
        batcher.command("HGETALL", "h"),
        batcher.command("HGET", "h", "missing"),
        return_exceptions=True,
    )
    assert got == ["1", "x", {"a": "1", "b": "2"}, None]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await batcher.command("GET", "h")
