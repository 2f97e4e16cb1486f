"""Moments as mailhub writes them: UTC, to the millisecond, ending in Z."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    """`moment` (aware, in UTC) as result documents and status records write it."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    """The current time, written as `iso` writes it."""
    return iso(datetime.now(UTC))
