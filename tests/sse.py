"""A minimal Server-Sent Events reader for tests, over an aiohttp client response."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SseMessage:
    id: str | None
    data: str
    #: The `event:` field; None for the default (`message`).
    event: str | None = None

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.data)


@dataclass
class SseReader:
    """Reads one message at a time; comment lines (keep-alives) are counted apart."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)

    async def next(self) -> SseMessage | None:
        """The next message, or None once the server closed the stream."""
        message_id: str | None = None
        event: str | None = None
        data: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    return SseMessage(message_id, "\n".join(data), event)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                self.comments.append(value)
            elif name == "id":
                message_id = value
            elif name == "data":
                data.append(value)
            elif name == "event":
                event = value

    async def rest(self) -> list[SseMessage]:
        """Every message until the server closes the stream."""
        messages = []
        while (message := await self.next()) is not None:
            messages.append(message)
        return messages
