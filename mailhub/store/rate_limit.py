"""Per-client rate limits, counted in Redis and shared by every web process.

Everything about them lives here: which client a counter belongs to
(`client_group`: an IPv4 address, or the /64 of an IPv6 one), the windows of
a rate such as RATE_LIMIT (`rate_windows`), one client's counters, the Lua
that counts them and the refusal (`Quota`), and `RateCounter`, which counts
a submit refused before it could be queued. The enqueue script counts an
accepted submit itself, with `OVER_LIMIT`, in the same round trip that
queues it.

Which submits count is the caller's choice, made once for every door: every
one that could have queued a mail, refused or not, and a wrong API key too
(so keys cannot be guessed at speed); not one refused for its content type,
which is all another origin's page can send without a CORS preflight.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from limits import parse_many
from redis.asyncio import Redis

from mailhub.errors import RateLimited
from mailhub.store import keys

logger = logging.getLogger(__name__)

#: One counter per IPv6 /64: a single host or home network usually holds a whole /64.
IPV6_GROUP_PREFIX = 64
#: The counter of clients whose address is unknown (a Unix socket peer).
UNKNOWN_CLIENT = "unknown"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: A Lua function: counts one submit in each fixed window. KEYS[first_key..]
#: are counter prefixes, ARGV[first_arg..] an amount and a length in seconds
#: per window. Windows start at multiples of their length on Redis's clock,
#: so every web process agrees on them. Returns nothing within every limit,
#: else the seconds until the exceeded window resets (at least 1) and its
#: number. As with the `limits` package before: the refused submit is counted
#: too, and the windows after the exceeded one are not.
OVER_LIMIT = """
local function over_limit(first_key, first_arg)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1])
  for k = first_key, #KEYS do
    local a = first_arg + 2 * (k - first_key)
    local amount, length = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local start = now - now % length
    local counter = KEYS[k] .. ':' .. start
    local count = redis.call('INCR', counter)
    if count == 1 then redis.call('EXPIREAT', counter, start + length) end
    if count > amount then
      local wait = math.ceil(start + length - now - tonumber(clock[2]) / 1000000)
      return math.max(1, wait), k - first_key + 1
    end
  end
end
"""
#: KEYS: one counter prefix per window. ARGV: amount and seconds of each
#: window. Returns {seconds until the window resets, window number} over a
#: limit, else {0, 0}.
_COUNT = (
    OVER_LIMIT
    + """
local wait, window = over_limit(1, 1)
return {wait or 0, window or 0}
"""
)


def rate_windows(rate_limit: str) -> tuple[tuple[int, int], ...]:
    """(amount, seconds) per window length of a RATE_LIMIT value; none for `off`."""
    limits = [] if rate_limit == "off" else parse_many(rate_limit)
    # One counter per window length: of two limits on the same length, the lower rules.
    amounts: dict[int, int] = {}
    for item in limits:
        seconds = item.get_expiry()
        amounts[seconds] = min(item.amount, amounts.get(seconds, item.amount))
    return tuple((amount, seconds) for seconds, amount in amounts.items())


def client_group(address: IPAddress | None) -> str:
    """The name one client's counters go by: an IPv4 address, an IPv6 /64, or `unknown`.

    One spelling per group: `address` is already an `ipaddress` value (an
    IPv4-mapped IPv6 address should arrive as its IPv4 address), and a /64 is
    written compressed, e.g. `2001:db8:1:2::/64`.
    """
    if address is None:
        return UNKNOWN_CLIENT
    if address.version == 4:
        return str(address)
    network = ipaddress.IPv6Network((int(address), IPV6_GROUP_PREFIX), strict=False)
    return str(network)


@dataclass(frozen=True)
class Quota:
    """One client's rate limits, as `OVER_LIMIT` counts them."""

    #: The client's group (`client_group`).
    client: str
    #: (amount, seconds) of each fixed window, in RATE_LIMIT's order.
    windows: tuple[tuple[int, int], ...]

    def counter_keys(self) -> list[str]:
        """The KEYS a script passes to `over_limit`, one per window."""
        return [keys.rate_limit(seconds, self.client) for _, seconds in self.windows]

    def script_args(self) -> list[int]:
        """The ARGV a script passes to `over_limit`: amount and seconds of each window."""
        return [number for window in self.windows for number in window]

    def refusal(self, retry_after: int, window: int) -> RateLimited:
        """The 429 for going over window number `window` (from 1)."""
        amount, seconds = self.windows[window - 1]
        logger.warning("rate limit %d per %d s reached by %s", amount, seconds, self.client)
        return RateLimited(
            f"Too many emails from your address; try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


class RateCounter:
    """Counts submits that never reach the enqueue script, against any `Quota`."""

    def __init__(self, redis: Redis) -> None:
        self._count = redis.register_script(_COUNT)

    async def count(self, quota: Quota) -> None:
        """Count one submit; `RateLimited` if over. One round trip, none without windows."""
        if not quota.windows:
            return
        retry_after, window = await self._count(keys=quota.counter_keys(), args=quota.script_args())
        if int(retry_after):
            raise quota.refusal(int(retry_after), int(window))
