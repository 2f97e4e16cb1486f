"""What a server process sets up about itself: its open-file limit, and how it logs running out.

Every connection, SSE stream and WebSocket costs a file descriptor. Many
systems start a process with a soft limit of 1,024 although the hard limit
allows far more; mailhub raises the soft limit to the hard one at start-up.

When the limit is reached anyway, asyncio's listening socket fails to accept
(EMFILE) and retries every second, reporting each failure, up to one per
pending connection and loop turn, through the loop's exception handler,
traceback included. `AcceptErrorLog` turns that into one line when it
starts and one line per `window` seconds while it lasts.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from typing import Any

logger = logging.getLogger(__name__)

#: What `BaseSelectorEventLoop._accept_connection` reports when accept() fails for lack of resources.
_ACCEPT_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def raise_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        # An infinite hard limit (macOS) cannot be the soft one: leave it as it is.
        logger.info("open file limit: %d", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logger.warning("open file limit stays %d: raising it to %d failed: %s", soft, hard, exc)
        return soft
    logger.info("open file limit raised from %d to %d", soft, hard)
    return hard


class AcceptErrorLog:
    """A loop exception handler: accept errors logged once per burst, everything else passed on."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, window: float = 10.0) -> None:
        self.loop = loop
        self.window = window
        #: Accept errors in the current window, after the one that was logged.
        self.repeats = 0
        self._window_timer: asyncio.TimerHandle | None = None
        self._previous = loop.get_exception_handler()

    @property
    def in_burst(self) -> bool:
        """True from an accept error until a whole window passes without one."""
        return self._window_timer is not None

    def install(self) -> AcceptErrorLog:
        self.loop.set_exception_handler(self)
        return self

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (
            isinstance(exc, OSError)
            and exc.errno in _ACCEPT_ERRORS
            and str(context.get("message", "")).startswith("socket.accept()")
        ):
            self._pass_on(context)
        elif self._window_timer is None:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            logger.error(
                "cannot accept new connections: %s (open file limit %d); retrying every second, "
                "repeats are counted and logged every %gs",
                exc.strerror,
                limit,
                self.window,
            )
            self._window_timer = loop.call_later(self.window, self._end_window)
        else:
            self.repeats += 1

    def _end_window(self) -> None:
        if not self.repeats:
            self._window_timer = None  # the burst is over; the next error is logged at once
            return
        logger.error(
            "cannot accept new connections: %d more failed accepts in %gs", self.repeats, self.window
        )
        self.repeats = 0
        self._window_timer = self.loop.call_later(self.window, self._end_window)

    def _pass_on(self, context: dict[str, Any]) -> None:
        if self._previous is not None:
            self._previous(self.loop, context)
        else:
            self.loop.default_exception_handler(context)
