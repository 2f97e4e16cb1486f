"""Live task status over Server-Sent Events and WebSocket.

Both endpoints send the documents of `GET /api/v1/email/result` (plus `seq`,
`event`, `at`) as they change, through the process's one `EventHub`.

SSE streams are written by the hub itself as it dispatches an event (a
`Direct` writer): the event is framed once, and the same bytes go to each
stream's socket without waiting. aiohttp-sse still runs the response: the
headers, the keep-alive pings and their liveness check, the kernel's
TCP_USER_TIMEOUT, stop_streaming(). A WebSocket sends through a `Queued`
writer, one subscription per task it follows.

Each stream holds one of its client's slots (`admission`) while it is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator

from aiohttp import WSMsgType, hdrs, web
from aiohttp_sse import EventSourceResponse, sse_response
from redis.exceptions import RedisError

from mailhub.errors import (
    ApiError,
    InvalidRequest,
    OriginRefused,
    ServiceUnavailable,
    TaskNotFound,
    TooManyStreams,
)
from mailhub.live.event import Event
from mailhub.live.hub import EventHub
from mailhub.live.subscription import Direct, Queued, Subscription
from mailhub.web import admission, appkeys
from mailhub.web.open_streams import OpenStreams
from mailhub.web.views import task_id_from_query

logger = logging.getLogger(__name__)

SSE_PATH = "/api/v1/email/events"
WS_PATH = "/api/v1/email/ws"
#: Tasks one WebSocket may follow at once.
MAX_WS_SUBSCRIPTIONS = 100
MAX_WS_MESSAGE = 4096
#: Bytes an SSE client may leave unsent before it must catch up from the stored state
#: (about 100 events; a client that is reading keeps next to nothing unsent).
SSE_BUFFER_LIMIT = 64 * 1024


async def live_context(app: web.Application) -> AsyncIterator[None]:
    """The process's event hub (after the Redis context; it listens once a client follows),
    its open streams, and their per-client slots."""
    hub = EventHub(app[appkeys.STORE])
    app[appkeys.EVENT_HUB] = hub
    app[appkeys.STREAMS] = OpenStreams()
    app[appkeys.STREAM_SLOTS] = admission.StreamSlots(app[appkeys.SETTINGS].max_streams_per_client)
    yield
    await hub.stop()


async def close_streams(app: web.Application) -> None:
    """on_shutdown: end every open stream, so the server stops promptly."""
    await app[appkeys.STREAMS].close_all()


class _TaskEventSource(EventSourceResponse):
    """An SSE response whose stop_streaming() also ends the stream's subscription."""

    subscription: Subscription | None = None

    def stop_streaming(self) -> None:
        super().stop_streaming()
        if self.subscription is not None:
            self.subscription.close()


def _last_event_id(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID", "").strip()
    return int(raw) if raw.isdigit() and len(raw) < 19 else 0


async def _current(hub: EventHub, task_id: str) -> Event:
    event = await hub.current(task_id)
    if event is None:
        raise TaskNotFound(f"No task {task_id}: it never existed or its result expired.")
    return event


def _connected(request: web.Request, response: EventSourceResponse) -> bool:
    transport = request.transport
    return response.is_connected() and transport is not None and not transport.is_closing()


@functools.lru_cache(maxsize=1024)
def sse_frame(event: Event, chunked: bool) -> bytes:
    """The event as `EventSourceResponse.send(event.data, id=seq)` writes it, made once per event.

    aiohttp-sse frames and writes in one awaited call, with a timeout per
    write; the hub writes each event to every stream without waiting, so the
    frame is made here, with the library's separator and line splitting (and,
    on HTTP/1.1, in the chunk that aiohttp's writer would have made of it).
    """
    sep = EventSourceResponse.DEFAULT_SEPARATOR
    lines = "".join(f"data: {line}{sep}" for line in EventSourceResponse.LINE_SEP_EXPR.split(event.data))
    frame = f"id: {event.seq}{sep}{lines}{sep}".encode()
    return b"%x\r\n%b\r\n" % (len(frame), frame) if chunked else frame


def _sse_writer(request: web.Request, stream: EventSourceResponse) -> Direct:
    """Write events straight to the stream's socket (after the headers, between pings)."""
    transport = request.transport
    chunked = stream.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"

    def write(event: Event) -> bool:
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > SSE_BUFFER_LIMIT
        ):
            return False
        transport.write(sse_frame(event, chunked))
        return True

    return Direct(write)


def _take_slot(request: web.Request) -> admission.Slot:
    """One of the client's stream slots; the client is counted as the rate limit counts it
    (its address through trusted proxies; an IPv6 address by its /64)."""
    client = request.app[appkeys.GUARD].client(request.remote, request.headers)
    return request.app[appkeys.STREAM_SLOTS].take(client.group)


async def task_events(request: web.Request) -> web.StreamResponse:
    """SSE: the task's current state, then each transition (`id:` = seq) until a terminal one."""
    task_id = task_id_from_query(request)
    try:
        slot = _take_slot(request)
    except TooManyStreams as exc:
        return admission.refusal(exc)
    with slot, request.app[appkeys.EVENT_HUB].subscribe(task_id) as subscription:
        return await _stream_events(request, subscription)


async def _stream_events(request: web.Request, subscription: Subscription) -> web.StreamResponse:
    hub, task_id = request.app[appkeys.EVENT_HUB], subscription.task_id
    after = _last_event_id(request)
    first = await _current(hub, task_id)
    if first.terminal and first.seq <= after:
        # Everything was seen: 204 tells EventSource to stop reconnecting.
        return web.Response(status=204)
    keepalive = request.app[appkeys.SETTINGS].sse_keepalive
    async with sse_response(request, ping_interval=keepalive, response_cls=_TaskEventSource) as stream:
        stream.subscription = subscription
        await request.app[appkeys.STREAMS].add(stream)
        try:
            kept_up = await subscription.run(
                first,
                _sse_writer(request, stream),
                after=after,
                # A quiet stream checks its client at each keep-alive; the
                # server's handler cancellation usually ends it sooner.
                alive=lambda: _connected(request, stream),
                idle=keepalive,
            )
        except RedisError as exc:
            # Headers are sent: end the stream; the client's reconnect resumes it.
            logger.warning("task %s: SSE stream ended, Redis unavailable: %s", task_id, exc)
        else:
            if not kept_up and request.transport is not None:
                # Too much unsent even after a resync: drop the client, as aiohttp-sse
                # does on a send timeout (a graceful close would wait on its reads).
                # Its EventSource reconnects and resumes with Last-Event-ID.
                logger.info("task %s: SSE client too slow, disconnected", task_id)
                request.transport.abort()
    return stream


async def task_events_ws(request: web.Request) -> web.StreamResponse:
    """WebSocket: `{"subscribe": id}` / `{"unsubscribe": id}` in, result documents out."""
    settings = request.app[appkeys.SETTINGS]
    try:
        admission.check_websocket_origin(request, settings.cors_origins)
        slot = _take_slot(request)
    except (OriginRefused, TooManyStreams) as exc:
        return admission.refusal(exc)
    with slot:
        ws = web.WebSocketResponse(heartbeat=settings.sse_keepalive, max_msg_size=MAX_WS_MESSAGE)
        await ws.prepare(request)
        await request.app[appkeys.STREAMS].add(ws)
        session = _WsSession(ws, request.app[appkeys.EVENT_HUB])
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await session.handle(message.data)
                else:
                    await session.error(InvalidRequest("Send JSON text messages."))
        finally:
            await session.close()
        return ws


class _WsSession:
    """One socket's followed tasks: a subscription, and the task running it, per task id.

    The session owns each subscription: unsubscribing, or the socket closing,
    closes it at once, even if the task that would run it has not started.
    """

    def __init__(self, ws: web.WebSocketResponse, hub: EventHub) -> None:
        self.ws = ws
        self.hub = hub
        self.followed: dict[str, tuple[Subscription, asyncio.Task[None]]] = {}

    async def handle(self, text: str) -> None:
        """Act on one client message; anything wrong is answered with an error message."""
        task_id = None
        try:
            action, task_id = _parse_command(text)
            if action == "subscribe":
                await self.subscribe(task_id)
            else:
                await self.unsubscribe(task_id)
        except ApiError as exc:
            await self.error(exc, task_id)
        except RedisError as exc:
            logger.warning("task %s: WebSocket subscribe failed, Redis unavailable: %s", task_id, exc)
            await self.error(ServiceUnavailable("The queue is unavailable; try again shortly."), task_id)

    async def subscribe(self, task_id: str) -> None:
        """Send the task's current state, then its transitions; ApiError if unknown."""
        if task_id in self.followed:
            return
        if len(self.followed) >= MAX_WS_SUBSCRIPTIONS:
            raise InvalidRequest(f"At most {MAX_WS_SUBSCRIPTIONS} tasks per connection.")
        subscription = self.hub.subscribe(task_id)
        try:
            first = await _current(self.hub, task_id)
        except BaseException:
            subscription.close()
            raise
        self.followed[task_id] = (subscription, asyncio.create_task(self._forward(subscription, first)))

    async def unsubscribe(self, task_id: str) -> None:
        """Stop following the task (nothing happens if it was not followed)."""
        followed = self.followed.pop(task_id, None)
        if followed is not None:
            await _stop(*followed)

    async def _forward(self, subscription: Subscription, first: Event) -> None:
        try:
            await subscription.run(first, Queued(lambda event: self.ws.send_str(event.data)))
        except ConnectionError:
            pass  # the socket closed under us; the reader loop ends the session
        except Exception:
            logger.exception("task %s: live updates over WebSocket stopped", subscription.task_id)
            await self.error(
                ServiceUnavailable("Live updates stopped; read the result instead."), subscription.task_id
            )
        finally:
            followed = self.followed.get(subscription.task_id)
            if followed is not None and followed[0] is subscription:
                del self.followed[subscription.task_id]

    async def error(self, exc: ApiError, task_id: str | None = None) -> None:
        document = exc.document()
        error = document["error"]
        if task_id is not None and isinstance(error, dict):
            error["task_id"] = task_id
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_json(document)

    async def close(self) -> None:
        followed = list(self.followed.values())
        self.followed.clear()
        # Synchronously, before any await: a handler cancelled while it waits
        # below would otherwise leave subscriptions behind.
        for subscription, task in followed:
            subscription.close()
            task.cancel()
        await asyncio.gather(*(task for _, task in followed), return_exceptions=True)


async def _stop(subscription: Subscription, task: asyncio.Task[None]) -> None:
    subscription.close()  # the hub forgets it now, whether or not its task ever ran
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _parse_command(text: str) -> tuple[str, str]:
    try:
        command = json.loads(text)
    except ValueError:
        raise InvalidRequest("Not valid JSON.") from None
    if (
        not isinstance(command, dict)
        or len(command) != 1
        or next(iter(command)) not in ("subscribe", "unsubscribe")
    ):
        raise InvalidRequest('Send {"subscribe": "<task_id>"} or {"unsubscribe": "<task_id>"}.')
    action, raw = next(iter(command.items()))
    try:
        return action, str(uuid.UUID(raw))
    except (TypeError, ValueError, AttributeError):
        raise InvalidRequest("Not a valid task id (a UUID).") from None
