"""Background loops that outlive a Redis outage: a failing step backs off, then runs again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

#: The longest wait between two failed runs of a step (seconds).
MAX_BACKOFF = 5.0


async def forever(step: Callable[[], Awaitable[None]], owner: str) -> None:
    """Run `step` again and again until cancelled; after a failure, wait 0.2, 0.4, ... up to 5 s.

    A failure is logged with its traceback, naming `owner` and the step.
    """
    failures = 0
    while True:
        try:
            await step()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
            delay = min(MAX_BACKOFF, 0.1 * 2**failures)
            logger.exception("%s: %s failed, retrying in %.1fs", owner, step.__name__, delay)
            await asyncio.sleep(delay)
