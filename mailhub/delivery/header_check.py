"""Read a written header block back and refuse it unless it is exactly what mailhub meant.

The check does not trust the interpreter: before Python 3.11.10 / 3.12.5
(CVE-2024-6923) the `email` package folds a decoded encoded word back into a
header without checking it for line breaks. mailhub folds address headers
with the `email` package only once per distinct value, and checks each such
fold as it is made (`address_headers`); it writes every other header itself.
Before a mail is sent its whole header block is read again
(`check_header_block`): the fields mailhub wrote, in order, once each, no
control character or line break in any line, and the text mailhub encoded
itself (Subject, a From display name) decoded and compared with the value.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailhub.errors import UnsendableMessage

#: A header field name (RFC 5322: printable ASCII but the colon).
_FIELD_NAME = re.compile(r"[!-9;-~]+")
#: Never in a header line or a decoded value: every control character but
#: the tab of folding white space, and the Unicode line breaks.
BREAKING = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
#: One encoded word as `encoded_words` writes it: UTF-8, base64.
_ENCODED_WORD = re.compile(r"=\?utf-8\?b\?([A-Za-z0-9+/]*={0,2})\?=")
#: A quoted string as `encoded_words` writes it.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Field:
    """One header field as mailhub writes it."""

    name: str
    #: The whole field, `Name: value`, folded with CRLF + space, no final CRLF.
    lines: str
    #: The text mailhub encoded into it itself, which it must read back as
    #: (Subject; From's display name), or None.
    text: str | None = None


def unfold(head: str) -> list[tuple[str, str]]:
    """The (name, unfolded value) of each field in `head`, CRLF-separated lines.

    Raises `UnsendableMessage` for a line mailhub cannot have written: a
    control character or line break in it, or neither a `Name:` line nor a
    continuation of one.
    """
    if BREAKING.search(head.replace("\r\n", "")):
        raise UnsendableMessage("header check failed: a line break or control character in a header")
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise UnsendableMessage("header check failed: a line that is not a header field")
        fields.append((name, value))
    return fields


def check_header_block(data: bytes, fields: Sequence[Field], *, utf8: bool) -> None:
    """Raise `UnsendableMessage` unless `data`'s header block is exactly `fields`.

    Every field written appears once, in order, and no other; no line holds
    a control character or line break; each value is the one written, and
    text mailhub encoded reads back as it was given. Without `utf8`
    (SMTPUTF8) the block is ASCII.
    """
    head, end, _ = data.partition(b"\r\n\r\n")
    if not end:
        raise UnsendableMessage("header check failed: no end of the header block")
    if not utf8 and not head.isascii():
        raise UnsendableMessage("header check failed: 8-bit text in a header of a mail without SMTPUTF8")
    try:
        found = unfold(head.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UnsendableMessage("header check failed: a header is not UTF-8") from exc
    names = [name for name, _ in found]
    if names != [field.name for field in fields]:
        raise UnsendableMessage(f"header check failed: {names} is not the header list mailhub wrote")
    for (name, value), field in zip(found, fields):
        if f"{name}:{value}" != field.lines.replace("\r\n", ""):
            raise UnsendableMessage(f"header check failed: {name} is not the value mailhub wrote")
        if field.text is not None and _read_text(name, value) != field.text:
            raise UnsendableMessage(f"header check failed: {name} does not read back as the text given")


def read_subject(value: str) -> str:
    """The text of an unfolded Subject `value` (after the colon) as mailhub writes it.

    Either encoded words only (each decoded on its own, the spaces between
    them dropped, as RFC 2047 says), or text taken as it is.
    """
    return _decoded(value[1:]) if value else ""


def read_display_name(value: str) -> str:
    """The display name of an unfolded `display name <addr>` value as mailhub writes it.

    Encoded words, one quoted string, or atoms taken as they are.
    """
    phrase, bracket, _ = value[1:].rpartition(" <")
    if not bracket or not value.endswith(">"):
        raise UnsendableMessage("header check failed: a mailbox without an address in <>")
    quoted = _QUOTED.fullmatch(phrase)
    if quoted is not None:
        return _QUOTED_PAIR.sub(lambda pair: pair[1], quoted[1])
    return _decoded(phrase)


def _decoded(text: str) -> str:
    """`text` decoded if it is nothing but encoded words, else as it is."""
    words = [_ENCODED_WORD.fullmatch(word) for word in text.split(" ")]
    if not all(words):
        return text
    try:
        return "".join(binascii.a2b_base64(word[1], strict_mode=True).decode() for word in words if word)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError alike
        raise UnsendableMessage("header check failed: a broken encoded word") from exc


def _read_text(name: str, value: str) -> str:
    """The text mailhub encoded itself into the field `name`: Subject's, or a mailbox's display name."""
    return read_subject(value) if name == "Subject" else read_display_name(value)
