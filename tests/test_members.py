"""Task members: the scripts (Lua) and the store (Python) name a task alike, and back."""

from __future__ import annotations

import uuid

import pytest

from mailhub.store import keys, members

_ROUND_TRIP = (
    members.LUA.replace("$TASK", keys.task(""))
    + "local m = compact(ARGV[1]) return {m, task_id_from(m), task_id_from(ARGV[1])}"
)

EDGES = ["00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"]


@pytest.mark.parametrize("task_id", EDGES + [str(uuid.uuid4()) for _ in range(20)])
async def test_lua_and_python_name_a_task_alike_and_back(redis, task_id):
    compact, back, unchanged = await redis.eval(_ROUND_TRIP, 0, task_id)
    assert compact == members.member(task_id) and len(compact) == 20
    assert back == members.task_id(compact) == task_id
    assert unchanged == task_id  # a member written before is the UUID itself


async def test_an_old_task_keeps_its_uuid_as_member_and_a_new_one_is_compact(redis):
    script = members.LUA.replace("$TASK", keys.task("")) + "return member_of(KEYS[1])"
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    await redis.hset(keys.task(old), mapping={"task_id": old, "state": "queued"})
    await redis.hset(keys.task(new), mapping={"state": "queued"})
    assert await redis.eval(script, 1, keys.task(old)) == old
    assert await redis.eval(script, 1, keys.task(new)) == members.member(new)


@pytest.mark.parametrize("hex_digits", ["0" * 32, "f" * 32, uuid.uuid4().hex, uuid.uuid4().hex])
async def test_a_digest_kept_in_base_85_names_its_address_index_again(redis, hex_digits):
    script = members.LUA.replace("$TASK", keys.task("")) + "return hex_of(ARGV[1])"
    kept = members.compact(hex_digits)
    assert len(kept) == 20 and await redis.eval(script, 0, kept) == hex_digits
