"""The MIME body of a mail: its MIME header fields and its encoded bytes.

Text goes as UTF-8 with CRLF line ends (a lone CR or LF becomes CRLF, as the
`email` package does). Each part's transfer encoding:
- `7bit`: ASCII text whose lines all fit RFC 5322's 998 octets, without NUL;
- `8bit`: the same with non-ASCII text, in the 8-bit form (the server offers
  8BITMIME, as nearly all do);
- `quoted-printable`: ASCII text with a longer line or a NUL (readable, and
  spam filters frown on base64 for plain ASCII text);
- `base64`: other non-ASCII text, and every non-ASCII text in the 7-bit form.
With an HTML alternative the body is `multipart/alternative`, its boundary
random and absent from both parts.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from mailhub.delivery.header_check import Field
from mailhub.errors import UnsendableMessage

#: RFC 5322: a line is never more than 998 octets, CRLF excluded.
MAX_LINE = 998
MIME_VERSION = Field("MIME-Version", "MIME-Version: 1.0")


def mime_body(text: str, html: str, *, eight_bit: bool) -> tuple[list[Field], bytes]:
    """The MIME header fields and the body of `text` and its HTML alternative (`html`, "" for none).

    `eight_bit`: for a server that offers 8BITMIME; without it the body is
    ASCII. Raises `UnsendableMessage` for text that is not valid Unicode (a
    lone surrogate).
    """
    plain = _part("plain", text, eight_bit=eight_bit)
    if not html:
        content_type, encoding, data = plain
        return [MIME_VERSION, content_type, encoding], data
    parts = [plain, _part("html", html, eight_bit=eight_bit)]
    boundary, delimiter = _boundary(parts)
    data = b"".join(
        b"%s\r\n%s\r\n%s\r\n\r\n%s\r\n" % (delimiter, type_.lines.encode(), encoding.lines.encode(), body)
        for type_, encoding, body in parts
    )
    content_type = Field("Content-Type", f'Content-Type: multipart/alternative; boundary="{boundary}"')
    return [MIME_VERSION, content_type], data + delimiter + b"--\r\n"


def _part(subtype: str, text: str, *, eight_bit: bool) -> tuple[Field, Field, bytes]:
    """A text part's Content-Type and Content-Transfer-Encoding fields and its encoded text."""
    try:
        lines = text.encode("utf-8").splitlines()
    except UnicodeEncodeError as exc:
        raise UnsendableMessage(f"the mail cannot be built: the {subtype} text is not valid Unicode") from exc
    data = b"\r\n".join(lines) + b"\r\n"
    fits = max(map(len, lines), default=0) <= MAX_LINE and b"\x00" not in data
    if data.isascii():
        encoding, data = ("7bit", data) if fits else ("quoted-printable", binascii.b2a_qp(data, istext=True))
    elif fits and eight_bit:
        encoding = "8bit"
    else:
        encoding, data = "base64", base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        Field("Content-Type", f'Content-Type: text/{subtype}; charset="utf-8"'),
        Field("Content-Transfer-Encoding", f"Content-Transfer-Encoding: {encoding}"),
        data,
    )


def _boundary(parts: list[tuple[Field, Field, bytes]]) -> tuple[str, bytes]:
    """A random multipart boundary and its delimiter line, found in no part."""
    while True:  # 96 random bits: a second round is next to impossible
        boundary = "=_" + secrets.token_hex(12)
        delimiter = b"--" + boundary.encode()
        if not any(delimiter in body for _, _, body in parts):
            return boundary, delimiter
