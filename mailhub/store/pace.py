"""The send pace: permits to start sends, shared by every worker through Redis.

A worker asks for permits before it reads entries from the queue, so mail
over the pace stays on the stream, unread: no attempt counted, no send slot
or queue entry held while it waits. Two things set the pace:

- `SMTP_RATE` (e.g. `14/second;500/hour`): for each window length, a log of
  the sends started in the last window (`keys.pace_log`, a sorted set scored
  by Redis's clock); a permit is granted only while every log holds fewer
  than its amount. So no window of that length, wherever it starts, holds
  more sends than allowed.
- A throttling reply (`errors.Throttled`): `throttled` starts a slow-down
  shared by every worker (`keys.PACE_THROTTLE`): no permit for a pause, then
  at most half as many sends per second as were started in the second up to
  the throttled one. A throttling reply to a send that began after the slow-down started
  deepens it (the pause doubles, the cap halves again); replies to sends
  that were already under way belong to it. The slow-down is forgotten once
  `recovery` seconds pass without deepening.

The one-second log is always kept (without an amount when `SMTP_RATE` has
none), so a slow-down knows how fast mail was going.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from mailhub.settings import Settings
from mailhub.store import keys
from mailhub.store.batching import ScriptBatcher
from mailhub.store.rate_limit import rate_windows

#: The longest pause a slow-down grows to, in seconds.
MAX_PAUSE = 300.0
#: The log every slow-down reads its "sends per second" from.
_SECOND = 1

#: KEYS: the slow-down hash, then one log per window, the one-second log first.
#: ARGV: permits wanted, this reservation's token, then the amount (-1: none)
#: and length (ms) of each log's window. Grants as many as every log allows,
#: up to the number wanted, and logs them; returns {granted, ms until one
#: could be granted (when none is), Redis's time in ms}.
_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local slow = redis.call('HMGET', KEYS[1], 'until', 'cap')
local pause_until, cap = tonumber(slow[1]), tonumber(slow[2])
if pause_until and now < pause_until then return {0, pause_until - now, now} end
local granted, wait = tonumber(ARGV[1]), 0
for k = 2, #KEYS do
  local amount, length = tonumber(ARGV[2 * k - 1]), tonumber(ARGV[2 * k])
  if k == 2 and cap and (amount < 0 or cap < amount) then amount = cap end
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - length)
  if amount >= 0 then
    local used = redis.call('ZCARD', KEYS[k])
    local free = amount - used
    if free < granted then granted = math.max(0, free) end
    if free <= 0 then
      -- The permit whose expiry leaves room for one more.
      local frees = redis.call('ZRANGE', KEYS[k], used - amount, used - amount, 'WITHSCORES')
      wait = math.max(wait, tonumber(frees[2]) + length - now)
    end
  end
end
if granted == 0 then return {0, math.max(1, wait), now} end
for k = 2, #KEYS do
  local members = {}
  for i = 1, granted do
    members[2 * i - 1] = now
    members[2 * i] = ARGV[2] .. ':' .. i
  end
  redis.call('ZADD', KEYS[k], unpack(members))
  redis.call('PEXPIRE', KEYS[k], ARGV[2 * k])
end
return {granted, 0, now}
"""

#: KEYS: the logs. ARGV: a reservation's token, the first and last permit
#: number to give back. Unlogs permits that were granted but not used.
_GIVE_BACK = """
for k = 1, #KEYS do
  for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
    redis.call('ZREM', KEYS[k], ARGV[1] .. ':' .. i)
  end
end
"""

#: KEYS: the slow-down hash, the one-second log. ARGV: when the throttled
#: send's permit was granted (ms), first pause, longest pause, recovery (ms).
#: Returns {level, pause ms, cap per second} when the slow-down starts or
#: deepens; {0, 0, 0} when the send began before the current slow-down.
_THROTTLED = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local slow = redis.call('HMGET', KEYS[1], 'since', 'level', 'cap')
if slow[1] and tonumber(ARGV[1]) <= tonumber(slow[1]) then return {0, 0, 0} end
local level = (tonumber(slow[2]) or 0) + 1
-- The sends started in the second up to the throttled one: the pace that was too fast.
local sent = redis.call('ZCOUNT', KEYS[2], tonumber(ARGV[1]) - 999, ARGV[1])
local cap = math.max(1, math.floor(math.min(sent, tonumber(slow[3]) or sent) / 2))
local pause = math.floor(math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (level - 1)))
redis.call('HSET', KEYS[1], 'since', now, 'until', now + pause, 'level', level, 'cap', cap)
redis.call('PEXPIRE', KEYS[1], pause + tonumber(ARGV[4]))
return {level, pause, cap}
"""


@dataclass(frozen=True)
class Permits:
    """An answer of `SendPace.reserve`: how many sends may start now, or how long to wait."""

    granted: int
    #: Seconds until a permit could be granted (0 when some were).
    wait: float
    #: When they were granted: Redis's clock, in ms (what `throttled` compares).
    at: int
    #: Names these permits in the logs, for `give_back`.
    token: str


@dataclass(frozen=True)
class Slowdown:
    """A slow-down that a throttling reply started or deepened."""

    #: 1 for the first throttling episode, then 2, 3... while they keep coming.
    level: int
    #: Seconds during which no send starts.
    pause: float
    #: Sends per second allowed after the pause, until the slow-down is lifted.
    per_second: int


class SendPace:
    """Permits to start sends under `windows` ((amount, seconds) each) and any slow-down."""

    def __init__(
        self,
        redis: Redis,
        windows: tuple[tuple[int, int], ...] = (),
        *,
        throttle_pause: float = Settings.smtp_throttle_pause,
        throttle_recovery: float = Settings.smtp_throttle_recovery,
        batcher: ScriptBatcher | None = None,
    ) -> None:
        """`batcher`: shares pipelines with other calls (the task store's); by default one of its own."""
        amounts = dict((seconds, amount) for amount, seconds in windows)
        # The one-second log comes first, with or without an amount of its own.
        lengths = [_SECOND, *sorted(set(amounts) - {_SECOND})]
        self.windows = windows
        self._logs = [keys.pace_log(seconds) for seconds in lengths]
        self._log_args = [n for s in lengths for n in (amounts.get(s, -1), s * 1000)]
        self._pause_ms = int(throttle_pause * 1000)
        self._recovery_ms = int(throttle_recovery * 1000)
        self._batcher = batcher or ScriptBatcher(redis)
        self._reserve = redis.register_script(_RESERVE)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._throttled = redis.register_script(_THROTTLED)
        self._prefix = uuid.uuid4().hex[:12]
        self._serial = itertools.count()

    @classmethod
    def from_settings(
        cls, redis: Redis, settings: Settings, batcher: ScriptBatcher | None = None
    ) -> SendPace:
        """The pace `SMTP_RATE` and the throttling settings ask for."""
        return cls(
            redis,
            rate_windows(settings.smtp_rate) if settings.smtp_rate else (),
            throttle_pause=settings.smtp_throttle_pause,
            throttle_recovery=settings.smtp_throttle_recovery,
            batcher=batcher,
        )

    async def reserve(self, wanted: int) -> Permits:
        """Up to `wanted` permits to start a send now; none, and the wait, over the pace.

        Permits not used must be given back (`give_back`); a permit lost to a
        crash only counts until its window ends.
        """
        token = f"{self._prefix}{next(self._serial)}"
        granted, wait_ms, now_ms = await self._batcher.run(
            self._reserve, [keys.PACE_THROTTLE, *self._logs], [wanted, token, *self._log_args]
        )
        return Permits(int(granted), int(wait_ms) / 1000, int(now_ms), token)

    async def give_back(self, permits: Permits, used: int) -> None:
        """Unlog the permits of `permits` beyond the first `used`: those sends never started."""
        if used < permits.granted:
            await self._give_back(keys=self._logs, args=[permits.token, used + 1, permits.granted])

    async def throttled(self, granted_at: int) -> Slowdown | None:
        """Slow every worker down after a throttling reply to a send permitted at `granted_at`.

        Returns the slow-down it started or deepened; None when the send began
        before the current one (its reply is part of it).
        """
        level, pause_ms, cap = await self._throttled(
            keys=[keys.PACE_THROTTLE, self._logs[0]],
            args=[granted_at, self._pause_ms, int(MAX_PAUSE * 1000), self._recovery_ms],
        )
        if not int(level):
            return None
        return Slowdown(int(level), int(pause_ms) / 1000, int(cap))
