"""The admin event stream: every task's transitions, live, for the dashboard (SSE).

It reads the process's one pub/sub connection through the event hub's "all
tasks" feed (`EventHub.watch_all`): never a Redis connection per browser.
Messages, in order:

- `event: ready` once the hub listens: anything published from then on
  arrives, so a client (re)loads its list now and then applies what follows;
- the result document of each transition (the default `message` event);
- `event: deleted` with `{"task_id", "event": "deleted", "at"}` when the
  owner deletes a task;
- `event: resync` when events may have been missed (a pub/sub reconnect, or
  a client too far behind): reload the list.

EventSource sends no headers, so besides the token this stream takes a
short-lived `ticket` in its query (`admin_auth`).
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from mailhub.errors import ServiceUnavailable
from mailhub.live.event import deleted_task
from mailhub.live.mailbox import Signal
from mailhub.live.watch import AllTasks
from mailhub.web import appkeys
from mailhub.web.admin_auth import TICKET_SECONDS

logger = logging.getLogger(__name__)


class _AdminEventSource(EventSourceResponse):
    """An SSE response whose stop_streaming() (at shutdown) also ends its feed."""

    feed: AllTasks | None = None

    def stop_streaming(self) -> None:
        super().stop_streaming()
        if self.feed is not None:
            self.feed.close()


def _connected(request: web.Request, stream: EventSourceResponse) -> bool:
    transport = request.transport
    return stream.is_connected() and transport is not None and not transport.is_closing()


async def admin_events(request: web.Request) -> web.StreamResponse:
    """SSE: `ready`, then every transition of every task, deletions and resyncs."""
    hub = request.app[appkeys.EVENT_HUB]
    keepalive = request.app[appkeys.SETTINGS].sse_keepalive
    with hub.watch_all() as feed:
        if not await hub.listening():
            raise ServiceUnavailable("Live events are unavailable: Redis does not answer.")
        async with sse_response(request, ping_interval=keepalive, response_cls=_AdminEventSource) as stream:
            stream.feed = feed
            await request.app[appkeys.STREAMS].add(stream)
            await stream.send("{}", event="ready")
            while True:
                item = await feed.get(timeout=keepalive)
                if item is Signal.CLOSED or (item is None and not _connected(request, stream)):
                    break
                if item is Signal.RESYNC:
                    await stream.send("{}", event="resync")
                elif isinstance(item, str):
                    await stream.send(item, event="deleted" if deleted_task(item) else None)
    return stream


async def event_ticket(request: web.Request) -> web.Response:
    """A short-lived ticket that opens the admin event stream (EventSource sends no headers)."""
    ticket = request.app[appkeys.ADMIN_ACCESS].issue_ticket()
    return web.json_response({"ticket": ticket, "expires_in": TICKET_SECONDS})
