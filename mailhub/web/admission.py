"""Who may open a live stream: a cap per client address, and the WebSocket Origin check.

Every open SSE stream or WebSocket holds a socket, and so a file descriptor,
for as long as the client likes. Without a cap, one address can take every
descriptor the process has, and then nobody else's request is even accepted.
The cap is per web process: each process counts its own streams.
"""

from __future__ import annotations

from types import TracebackType
from urllib.parse import urlsplit

from aiohttp import web

from mailhub.errors import ApiError, OriginRefused, TooManyStreams

_DEFAULT_PORTS = (None, 80, 443)


class StreamSlots:
    """Counts each client's open streams (SSE and WebSocket together) in this process."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._open: dict[str, int] = {}

    def take(self, client: str) -> Slot:
        """Hold one of the client's slots until the `Slot` is released; TooManyStreams if none is left."""
        held = self._open.get(client, 0)
        if held >= self.per_client:
            raise TooManyStreams(
                f"At most {self.per_client} open streams per client; close one first.",
            )
        self._open[client] = held + 1
        return Slot(self, client)

    def held(self, client: str) -> int:
        """How many streams the client holds open now."""
        return self._open.get(client, 0)

    def _release(self, client: str) -> None:
        remaining = self._open[client] - 1
        if remaining:
            self._open[client] = remaining
        else:
            del self._open[client]  # no entry left behind per address ever seen


class Slot:
    """One held stream slot; a context manager that releases it, once."""

    __slots__ = ("_client", "_slots")

    def __init__(self, slots: StreamSlots, client: str) -> None:
        self._slots: StreamSlots | None = slots
        self._client = client

    def release(self) -> None:
        if self._slots is not None:
            self._slots._release(self._client)
            self._slots = None

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def refusal(exc: ApiError) -> web.Response:
    """The JSON answer to a refused stream, closing the connection: a client over its cap keeps no socket."""
    response = web.json_response(exc.document(), status=exc.status, headers=exc.headers)
    response.force_close()
    return response


def check_websocket_origin(request: web.Request, allowed: tuple[str, ...]) -> None:
    """OriginRefused unless the upgrade comes from this site, from `CORS_ORIGINS`, or from no page.

    Browsers send `Origin` with every WebSocket and do not apply CORS to it:
    without this check any page a visitor opens could use the socket in the
    visitor's name. Clients that are not browsers (curl, servers) send no
    `Origin` and pass.
    """
    origin = request.headers.get("Origin")
    if origin is None or origin.lower() in allowed or _same_origin(origin, request.host):
        return
    raise OriginRefused("Pages on this origin may not open a WebSocket here (see CORS_ORIGINS).")


def _same_origin(origin: str, host: str) -> bool:
    """True if `origin` names the host (and port) the request was sent to.

    The scheme is not compared, and 80 and 443 count as the same (default)
    port: behind a proxy that ends TLS, the page is https while the request
    reaching mailhub is http.
    """
    try:
        page, target = urlsplit(origin), urlsplit(f"//{host}")
        ports = _explicit(page.port), _explicit(target.port)
    except ValueError:
        return False
    return page.hostname is not None and page.hostname == target.hostname and ports[0] == ports[1]


def _explicit(port: int | None) -> int | None:
    return None if port in _DEFAULT_PORTS else port
