"""What stands between a public form and the owner's SMTP account.

Who the client is (its address, through trusted proxies, and the group the
rate limit counts it in), API keys, the rate limit, the scope of an
Idempotency-Key, the recipient allowlist and the honeypot field. No web
framework here: a view passes in the client's address and headers, so every
door (the JSON contract, a server-side form) asks the same questions.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from multidict import MultiMapping
from redis.asyncio import Redis

from mailhub.errors import InvalidRequest, RecipientRefused, Unauthorized
from mailhub.settings import Settings
from mailhub.store.rate_limit import IPAddress, Quota, RateCounter, client_group, rate_windows

logger = logging.getLogger(__name__)

FORWARDED_FOR = "X-Forwarded-For"


@dataclass(frozen=True)
class Client:
    """Who sent a request, as the guard counts and scopes it."""

    #: The address, one spelling per address (`unknown` without one), for the log.
    address: str
    #: What the rate limit counts and an Idempotency-Key is scoped to: the
    #: address, or its /64 for IPv6 (`rate_limit.client_group`).
    group: str


class SubmitGuard:
    """Admits or refuses one submission; takes the settings and a Redis client."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self._proxies = [ipaddress.ip_network(net) for net in settings.trusted_proxies]
        self._windows = rate_windows(settings.rate_limit)
        self._counter = RateCounter(redis)

    def client(self, remote: str | None, headers: MultiMapping[str]) -> Client:
        """The client that sent a request from `remote` with `headers`.

        X-Forwarded-For counts only when a trusted proxy sent it: every line of
        it is read, and its hops are walked from the right, past trusted
        proxies, to the first one that is not. A hop on that walk that is not
        an IP address is `InvalidRequest` (400): only a trusted proxy can
        have put it there, and guessing would let one client pass for many.
        """
        address = _ip(remote or "")
        if self._trusted(address):
            hops = [hop.strip() for line in headers.getall(FORWARDED_FOR, ()) for hop in line.split(",")]
            while self._trusted(address) and hops:
                hop = hops.pop()
                address = _ip(hop)
                if address is None:
                    raise InvalidRequest(f"{FORWARDED_FOR} holds a hop that is not an IP address.")
        return _identify(address)

    def _trusted(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self._proxies)

    def check_api_key(self, headers: Mapping[str, str]) -> str | None:
        """The id of the API key the request carries (None when API_KEYS is off); `Unauthorized` if wrong.

        The id is a hash of the key: it can name the caller in Redis without revealing the key.
        """
        if not self.settings.api_keys:
            return None
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(token.encode(), key.encode()) for key in self.settings.api_keys
        ):
            raise Unauthorized(
                "Send a valid API key: Authorization: Bearer <key>.", headers={"WWW-Authenticate": "Bearer"}
            )
        return hashlib.sha256(token.encode()).hexdigest()[:32]

    @staticmethod
    def idempotency_scope(client: Client, api_key: str | None) -> str:
        """Whose Idempotency-Keys these are: the API key's if one was used, else the client group's."""
        return f"key:{api_key}" if api_key else f"client:{client.group}"

    def quota(self, client: Client) -> Quota:
        """The client's rate limits; no windows when RATE_LIMIT is off."""
        return Quota(client.group, self._windows)

    async def count(self, quota: Quota) -> None:
        """Count a submit refused before it reached the enqueue script; `RateLimited` if over.

        Call it for every refusal of a request that could have queued a mail
        (a wrong API key too), not for one refused for its content type.
        One round trip, none when RATE_LIMIT is off.
        """
        await self._counter.count(quota)

    def check_recipient(self, address: str) -> None:
        if self.settings.capture_mode:
            return  # nothing leaves the machine
        allowed = self.settings.allowed_recipients
        address = address.lower()
        domain = "@" + address.rpartition("@")[2]
        if "*" in allowed or address in allowed or domain in allowed:
            return
        raise RecipientRefused(
            "This server does not send mail to that address.", fields={"to": ["Not an allowed recipient."]}
        )

    def is_spam(self, payload: object) -> bool:
        """True if the honeypot field, which people never see, was filled in."""
        field = self.settings.honeypot_field
        return bool(field and isinstance(payload, dict) and payload.get(field))

    def strip_honeypot(self, payload: object) -> object:
        field = self.settings.honeypot_field
        if field and isinstance(payload, dict):
            return {k: v for k, v in payload.items() if k != field}
        return payload


# Both cached: one client sends many requests, and parsing an IPv6 address and its
# /64 costs 15 µs.
@functools.lru_cache(maxsize=4096)
def _identify(address: IPAddress | None) -> Client:
    return Client(str(address) if address else "unknown", client_group(address))


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> IPAddress | None:
    """`text` as an IP address in one spelling (IPv4-mapped IPv6 as IPv4), or None.

    A port, as some proxies write it (`203.0.113.7:5000`, `[2001:db8::1]:443`), is dropped.
    """
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id:  # fe80::1%eth0: the zone names our interface, not the client
            return ipaddress.IPv6Address(int(address))
    return address
