"""Free text in headers, written by mailhub itself: Subject and a From display name.

Plain ASCII goes as it is (a subject folded at spaces, a display name as
atoms or one quoted string); anything else, `=?` included, goes as RFC 2047
base64 encoded words (`=?utf-8?b?...?=`, at most 75 characters each, whole
characters, one per line), which can only ever read back as the text: base64
carries no line break or header syntax out. `header_check` reads both back.
"""

from __future__ import annotations

import binascii
import re

from mailhub.delivery.header_check import Field
from mailhub.errors import UnsendableMessage

#: RFC 5322: a line SHOULD be at most 78 characters, CRLF excluded.
LINE = 78
#: RFC 2047: a line holding an encoded word is at most 76 characters.
_WORD_LINE = 76
_WORD_OVERHEAD = len("=?utf-8?b??=")

#: A subject written as it is: printable ASCII words separated by one space.
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
#: A display name written as it is: RFC 5322 atoms separated by one space.
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def subject_field(subject: str) -> Field:
    """Subject: plain ASCII as it is, folded at spaces; anything else as encoded words.

    Plain means printable ASCII words separated by single spaces, without
    `=?`; leading, trailing or repeated spaces, a word too long for a line
    and every other character go encoded, so the text reads back exactly.
    Raises `UnsendableMessage` for a lone surrogate (not UTF-8).
    """
    if not subject:
        return Field("Subject", "Subject:", text="")
    if _PLAIN_TEXT.fullmatch(subject) and "=?" not in subject:
        lines = _folded_at_spaces("Subject: " + subject)
        if lines is not None:
            return Field("Subject", lines, text=subject)
    words = encoded_words(subject, first_line=len("Subject: "))
    return Field("Subject", "Subject: " + "\r\n ".join(words), text=subject)


def mailbox_field(name: str, display_name: str, addr_spec: str) -> Field:
    """`name: display_name <addr_spec>`, `addr_spec` a plain `local@domain` written as it is.

    The display name goes as atoms, or as one quoted string if it is other
    printable ASCII with single spaces and no `=?`, when the field fits one
    line; else as encoded words, one per line, the address after them.
    """
    prefix = f"{name}: "
    if _PLAIN_TEXT.fullmatch(display_name) and "=?" not in display_name:
        phrase = display_name if _ATOMS.fullmatch(display_name) else _quoted(display_name)
        line = f"{prefix}{phrase} <{addr_spec}>"
        if len(line) <= LINE:
            return Field(name, line, text=display_name)
    words = encoded_words(display_name, first_line=len(prefix))
    address = f"<{addr_spec}>"
    lead = len(prefix) if len(words) == 1 else 1
    if lead + len(words[-1]) + 1 + len(address) <= _WORD_LINE:
        words[-1] += " " + address
    else:
        words.append(address)
    return Field(name, prefix + "\r\n ".join(words), text=display_name)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _folded_at_spaces(text: str) -> str | None:
    """`text` folded before spaces into lines of at most `LINE` characters, or None if it cannot be."""
    if len(text) <= LINE:
        return text
    first, *words = text.split(" ")
    lines = [first]
    for word in words:
        if len(lines[-1]) + 1 + len(word) <= LINE:
            lines[-1] += " " + word
        elif 1 + len(word) <= LINE:
            lines.append(" " + word)
        else:
            return None
    return "\r\n".join(lines)


def encoded_words(text: str, *, first_line: int) -> list[str]:
    """`text` as `=?utf-8?b?...?=` words of whole characters, one per line.

    The first word follows `first_line` characters on its line, each next one
    a space: every line stays within RFC 2047's 76 characters. Raises
    `UnsendableMessage` for a lone surrogate (not UTF-8).
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsendableMessage("the mail cannot be built: a header's text is not valid Unicode") from exc
    words: list[str] = []
    start, budget = 0, _word_bytes(first_line)
    while start < len(data):
        end = min(start + budget, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character: end before it
            end -= 1
        space = data.rfind(b" ", start, end)
        if end < len(data) and space > start:
            # End after a space: readers that keep the white space between two
            # encoded words (the `email` package in a display name) read the
            # same text as those that drop it, as RFC 2047 says.
            end = space + 1
        words.append("=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False).decode() + "?=")
        start, budget = end, _word_bytes(1)
    return words


def _word_bytes(before: int) -> int:
    """The UTF-8 bytes a base64 word can carry after `before` characters of its line."""
    return (_WORD_LINE - before - _WORD_OVERHEAD) // 4 * 3
