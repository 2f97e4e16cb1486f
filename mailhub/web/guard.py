"""What stands between a public form and the owner's SMTP account.

API keys, per-client rate limits shared through Redis, the recipient
allowlist and the honeypot field. No web framework here: the view passes in
the client's address and headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Mapping

from redis.asyncio import Redis

from mailhub.errors import RecipientRefused, Unauthorized
from mailhub.settings import Settings
from mailhub.store.rate_limit import Quota, RateCounter, rate_windows

logger = logging.getLogger(__name__)


class SubmitGuard:
    """Admits or refuses one submission; takes the settings and a Redis client."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self._proxies = [ipaddress.ip_network(net) for net in settings.trusted_proxies]
        self._windows = rate_windows(settings.rate_limit)
        self._counter = RateCounter(redis)

    def check_api_key(self, headers: Mapping[str, str]) -> None:
        if not self.settings.api_keys:
            return
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(token.strip().encode(), key.encode()) for key in self.settings.api_keys
        ):
            raise Unauthorized(
                "Send a valid API key: Authorization: Bearer <key>.", headers={"WWW-Authenticate": "Bearer"}
            )

    def client_address(self, remote: str | None, headers: Mapping[str, str]) -> str:
        """The client's address; X-Forwarded-For counts only when a trusted proxy sent it."""
        address = remote or "unknown"
        if not self._proxies:
            return address
        forwarded = [hop.strip() for hop in headers.get("X-Forwarded-For", "").split(",")]
        # Walk back from the nearest hop while the hop is one of our proxies.
        while self._trusted(address) and forwarded and forwarded[-1]:
            address = forwarded.pop()
        return address

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    def quota(self, client: str) -> Quota:
        """The client's rate limits; no windows when RATE_LIMIT is off."""
        return Quota(client, self._windows)

    async def count(self, quota: Quota) -> None:
        """Count a submit that was refused before the enqueue script; `RateLimited` if over.

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
