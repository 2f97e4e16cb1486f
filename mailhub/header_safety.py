"""What a visitor's value must not contain to reach a mail header.

Shared by every door that takes values (the contract's schemas, the forms)
and by message building, which checks each value again before it builds.

Why each rule:
- Control characters (C0, DEL, C1) and the Unicode line breaks: CR and LF
  end a header line; the `email` package also refuses every character
  `str.splitlines()` breaks on (VT, FF, FS, GS, RS, NEL, U+2028, U+2029),
  so such a value could be queued but never built into a mail.
- RFC 2047 encoded words (`=?utf-8?q?...?=`): the `email` package decodes
  them when it reads a header value, and before Python 3.11.10 / 3.12.5
  (CVE-2024-6923) it folds the decoded text back without checking it for
  line breaks, so `=0D=0A` in a subject becomes a real header line.
- `%` and `!` in an address's local part: old relays still route
  `victim%evil.com@relay` and `evil.com!victim@relay` onwards.
"""

from __future__ import annotations

import re

#: Characters no header value may hold, as the body of a regex character
#: class valid in Python and in JSON Schema (ECMA 262) patterns alike: C0
#: controls, DEL, C1 controls (NEL among them), LINE and PARAGRAPH SEPARATOR.
#: Together they cover every character `str.splitlines()` breaks on.
FORBIDDEN_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
#: Encoded-word syntax in the same dialect: `=?charset?encoding?text?=` with
#: any charset (`utf-8*en` too), any encoding letters and whitespace anywhere,
#: wider than the `email` package's own reading on purpose.
ENCODED_WORD = r"=\?[^?]*\?[^?]*\?[\s\S]*?\?="

_FORBIDDEN = re.compile(f"[{FORBIDDEN_CHARACTERS}]")
#: The start of an encoded word up to its text; the end (`?=`) is looked
#: for with `str.find`, so a long value is read once, never backtracked.
_ENCODED_WORD_START = re.compile(r"=\?[^?]*\?[^?]*\?")
_ROUTING = re.compile(r"[%!]")

CONTROL_MESSAGE = "Must not contain control characters such as line breaks."
ENCODED_WORD_MESSAGE = "Must not contain encoded-word syntax (=?charset?q?...?=)."
ROUTING_MESSAGE = "Must not contain % or ! before the @ (relay routing)."


def has_encoded_word(value: str) -> bool:
    """Whether `value` holds anything shaped like an RFC 2047 encoded word."""
    start = _ENCODED_WORD_START.search(value)
    # The leftmost start ends earliest, so if no `?=` follows it none follows any.
    return start is not None and value.find("?=", start.end() - 1) != -1


def header_value_problem(value: str) -> str | None:
    """Why `value` may not go into a header, or None if it may.

    Refused: C0 controls, DEL, C1 controls, U+2028, U+2029 (every line break
    `str.splitlines()` knows) and encoded-word syntax.
    """
    if _FORBIDDEN.search(value):
        return CONTROL_MESSAGE
    if has_encoded_word(value):
        return ENCODED_WORD_MESSAGE
    return None


def address_problem(value: str) -> str | None:
    """Why the address `value` may not go into an address header, or None if it may.

    `value` is `local@domain` or `Display Name <local@domain>`. Everything
    `header_value_problem` refuses is refused anywhere in it (so no encoded
    word in the display name or the local part), and `%` or `!` in the local
    part (percent hack, bang path). Whether it is a valid address at all is
    for the caller's address validator.
    """
    problem = header_value_problem(value)
    if problem is not None:
        return problem
    addr_spec = value.strip()
    if addr_spec.endswith(">") and "<" in addr_spec:
        addr_spec = addr_spec[addr_spec.rindex("<") + 1 : -1]
    local_part = addr_spec.rpartition("@")[0]
    if _ROUTING.search(local_part):
        return ROUTING_MESSAGE
    return None
