"""What a visitor's value must not contain to reach a mail header.

Shared by every door that takes values (the contract's schemas, the forms)
and by message building, which checks the result again.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def header_value_problem(value: str) -> str | None:
    """Why `value` may not go into a header, or None if it may."""
    if _CONTROL.search(value):
        return "Must not contain control characters such as line breaks."
    return None
