"""Who may use the admin API and the dashboard at /admin.

- `ADMIN_TOKEN` set: every request to `/api/v1/admin/...` carries
  `Authorization: Bearer <token>`, or gets 401. Tokens are compared as
  SHA-256 digests with `hmac.compare_digest`: the time taken says nothing
  about the token, not even its length.
- Not set: the admin API and the dashboard do not exist (404), except in
  capture mode on a loopback HOST, where they are open for development:
  no mail leaves the machine and only the machine reaches the server. Open,
  a request from a page of another origin is still refused (403), so a
  web page the developer visits cannot drive it.

EventSource cannot send headers, so the admin event stream also takes a
`ticket` in its query: `POST /api/v1/admin/events/ticket` (with the token)
returns one, valid for `TICKET_SECONDS`. A ticket is an HMAC of its expiry
under a key derived from the token: stateless, so any web process accepts
it, and the token itself never appears in a URL, a log or a history.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import time
from collections.abc import Mapping
from hmac import compare_digest
from hmac import new as hmac_new
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from mailhub.errors import OriginRefused, Unauthorized
from mailhub.settings import Settings

API_PREFIX = "/api/v1/admin"
PAGE_PATH = "/admin"
EVENTS_PATH = API_PREFIX + "/events"
#: How long an event-stream ticket is good for (seconds): enough to open the stream.
TICKET_SECONDS = 60
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class Mode(enum.Enum):
    TOKEN = "token"  #: ADMIN_TOKEN is set: every call needs it
    OPEN = "open"  #: capture mode on a loopback HOST without a token: open for development
    OFF = "off"  #: no token: the admin API and the dashboard do not exist


class AdminAccess:
    """Decides admin requests; built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        token = settings.admin_token
        if token:
            self.mode = Mode.TOKEN
        elif settings.capture_mode and settings.host in LOOPBACK_HOSTS:
            self.mode = Mode.OPEN
        else:
            self.mode = Mode.OFF
        self._digest = hashlib.sha256(token.encode()).digest()
        self._ticket_key = hashlib.sha256(b"mailhub admin event ticket\0" + token.encode()).digest()

    def token_matches(self, token: str) -> bool:
        """True if `token` is the admin token (in constant time)."""
        return self.mode is Mode.TOKEN and compare_digest(
            hashlib.sha256(token.encode()).digest(), self._digest
        )

    def authorize(self, headers: Mapping[str, str], host: str, ticket: str | None = None) -> None:
        """Return if the request may proceed; `Unauthorized` or `OriginRefused` if not."""
        if self.mode is Mode.OPEN:
            origin = headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != host:
                raise OriginRefused("Pages of other origins may not use the admin API.")
            return
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(token.strip()):
            return
        if ticket is not None and self.ticket_valid(ticket):
            return
        raise Unauthorized(
            "Send the admin token: Authorization: Bearer <ADMIN_TOKEN>.",
            headers={"WWW-Authenticate": 'Bearer realm="mailhub admin"'},
        )

    def issue_ticket(self, now: float | None = None) -> str:
        """A ticket for the admin event stream, valid `TICKET_SECONDS` from `now`."""
        expires = int(now if now is not None else time.time()) + TICKET_SECONDS
        return f"{expires}.{self._sign(expires)}"

    def ticket_valid(self, ticket: str, now: float | None = None) -> bool:
        expires, _, signature = ticket.partition(".")
        if not expires.isdigit() or len(expires) > 12 or self.mode is not Mode.TOKEN:
            return False
        fresh = int(expires) >= (now if now is not None else time.time())
        return compare_digest(signature.encode(), self._sign(int(expires)).encode()) and fresh

    def _sign(self, expires: int) -> str:
        mac = hmac_new(self._ticket_key, str(expires).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def is_admin_path(path: str) -> bool:
    return path == PAGE_PATH or path == API_PREFIX or path.startswith(API_PREFIX + "/")


def middleware(access: AdminAccess) -> Middleware:
    """The gate in front of every admin path (the page itself needs no token: it asks for one)."""

    @web.middleware
    async def admin_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_admin_path(request.path):
            return await handler(request)
        if access.mode is Mode.OFF:
            raise web.HTTPNotFound(reason="Not Found")
        if request.path != PAGE_PATH:
            ticket = request.query.get("ticket") if request.path == EVENTS_PATH else None
            access.authorize(request.headers, request.host, ticket)
        return await handler(request)

    return admin_gate
