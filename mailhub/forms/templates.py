"""The owner's templates: `{field}` placeholders replaced literally, once.

A placeholder is `{` + a field name + `}`. Each one is replaced by the
field's value in a single pass: a value is never read as a template again,
so braces or markup a visitor typed stay exactly as typed. Nothing is
evaluated (this is not `str.format`). Any other brace is plain text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

#: What a field name may look like; also what a placeholder may name.
NAME = r"[A-Za-z_][A-Za-z0-9_-]{0,63}"
_PLACEHOLDER = re.compile(r"\{(" + NAME + r")\}")


def placeholders(template: str) -> list[str]:
    """The field names a template refers to, in order of first appearance."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(template)))


def render(template: str, values: Mapping[str, str], *, escape: Callable[[str], str] | None = None) -> str:
    """`template` with each `{name}` replaced by `values[name]` (empty if absent).

    With `escape`, every value goes through it first (`html.escape` for an
    HTML template). The template's own text is never escaped.
    """

    def value(match: re.Match[str]) -> str:
        text = values.get(match.group(1), "")
        return escape(text) if escape is not None else text

    return _PLACEHOLDER.sub(value, template)
