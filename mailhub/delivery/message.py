"""Build a mail from its parts into the bytes SMTP sends, and check them.

No `EmailMessage` per mail: the header block is written field by field
(`address_headers`, `encoded_words`, Date and Message-ID here), the body by
`mime_body`; the `email` package folds only address headers, once per
distinct value. Before the bytes leave, the whole header block is read back
(`header_check`): every line one mailhub wrote, once, with no line break in
its value. A mail that fails is never sent.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailhub.delivery.address_headers import address_header, sender_header
from mailhub.delivery.encoded_words import subject_field
from mailhub.delivery.header_check import Field, check_header_block
from mailhub.delivery.mime_body import MAX_LINE, mime_body
from mailhub.errors import UnsendableMessage
from mailhub.header_safety import address_problem, header_value_problem
from mailhub.store.tasks import Attempt

PLACEHOLDER = "{username}"
#: A Message-ID: `<left@right>`, printable ASCII without `<`, `>` or a second `@`.
_MESSAGE_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")


def render_body(body: str, username: str) -> str:
    """Replace `{username}` with the literal name; nothing else is interpreted."""
    return body.replace(PLACEHOLDER, username)


@dataclass(frozen=True)
class MessageParts:
    """What one mail is made of: header values as given, and the final text.

    `mail_from` is the owner's setting and From's address whatever else is
    given (DMARC); every other header value may come from a visitor and is
    checked again here (a task may predate today's rules).
    """

    mail_from: str
    #: One address, or several separated by commas.
    to: str
    subject: str
    message_id: str
    text: str
    #: An HTML alternative of `text` ("" for none).
    html: str = ""
    reply_to: str = ""
    #: From's display name ("" keeps `mail_from` as it is).
    from_name: str = ""

    def problem(self) -> str | None:
        """Why a value that may come from a visitor may not go into a header, or None.

        Beyond `header_safety`'s rules, every header value must be valid
        Unicode (no lone surrogate).
        """
        try:
            "".join((self.mail_from, self.to, self.reply_to, self.subject, self.from_name)).encode()
        except UnicodeEncodeError:
            return "a header value is not valid Unicode"
        checks = [("To", address_problem(address)) for address in self.to.split(",")]
        checks += [
            ("Reply-To", address_problem(self.reply_to) if self.reply_to else None),
            ("Subject", header_value_problem(self.subject)),
            ("From", header_value_problem(self.from_name)),
        ]
        for name, problem in checks:
            if problem is not None:
                return f"{name}: {problem}"
        return None


def parts_of(attempt: Attempt, mail_from: str) -> MessageParts:
    """The parts of an attempt's mail; `{username}` is filled into the body unless it is final."""
    return MessageParts(
        mail_from=mail_from,
        to=attempt.to,
        subject=attempt.subject,
        message_id=attempt.message_id,
        text=attempt.body if attempt.rendered else render_body(attempt.body, attempt.username),
        html=attempt.html,
        reply_to=attempt.reply_to,
        from_name=attempt.from_name,
    )


@dataclass(frozen=True)
class OutgoingMail:
    """A mail ready for one SMTP transaction: its envelope and its checked bytes."""

    sender: str
    recipients: tuple[str, ...]
    #: An envelope address is not ASCII: the server must offer SMTPUTF8.
    utf8: bool
    #: The 8-bit form, for servers that offer 8BITMIME (nearly all).
    data: bytes
    parts: MessageParts
    #: The header fields above the MIME ones, From to Message-ID, as in `data`.
    headers: tuple[Field, ...]

    def seven_bit_data(self) -> bytes:
        """The 7-bit form (ASCII), for a server without 8BITMIME, checked like `data`."""
        return _assembled(self.headers, self.parts, utf8=self.utf8, eight_bit=False)


def prepare(parts: MessageParts) -> OutgoingMail:
    """The mail of `parts` as checked bytes, with its envelope: From's address, To's addresses.

    UTF-8 text (and its HTML alternative), the headers of `parts`, the current
    Date. Raises `UnsendableMessage` for a value the header rules refuse, a
    value that is not valid Unicode, or a header block that does not read
    back as written.
    """
    problem = parts.problem()
    if problem is not None:
        raise UnsendableMessage(f"the mail cannot be built: {problem}")
    sender = sender_header(parts.mail_from, parts.from_name)
    to = address_header("To", parts.to)
    if not sender.addresses or not to.addresses:
        raise UnsendableMessage("the mail has no usable envelope: no sender or no recipient address")
    utf8 = not "".join((sender.addresses[0], *to.addresses)).isascii()
    headers = [sender.field(utf8=utf8), to.field(utf8=utf8)]
    if parts.reply_to:
        headers.append(address_header("Reply-To", parts.reply_to).field(utf8=utf8))
    headers += [subject_field(parts.subject), date_field(), message_id_field(parts.message_id)]
    data = _assembled(tuple(headers), parts, utf8=utf8, eight_bit=True)
    return OutgoingMail(sender.addresses[0], to.addresses, utf8, data, parts, tuple(headers))


def _assembled(headers: tuple[Field, ...], parts: MessageParts, *, utf8: bool, eight_bit: bool) -> bytes:
    """The header block and the MIME body as one mail, its header block checked."""
    mime_headers, body = mime_body(parts.text, parts.html, eight_bit=eight_bit)
    fields = [*headers, *mime_headers]
    head = "\r\n".join(field.lines for field in fields).encode("utf-8")
    data = head + b"\r\n\r\n" + body
    check_header_block(data, fields, utf8=utf8)
    return data


@functools.lru_cache(maxsize=2)
def _date(second: int) -> Field:
    return Field("Date", "Date: " + format_datetime(datetime.fromtimestamp(second, UTC)))


def date_field() -> Field:
    """Date: now, to the second (RFC 5322 form, in UTC: +0000), made once a second."""
    return _date(int(time.time()))


def message_id_field(message_id: str) -> Field:
    """Message-ID as stored; raises `UnsendableMessage` unless it is one `<left@right>` ASCII line."""
    if not _MESSAGE_ID.fullmatch(message_id) or len(message_id) > MAX_LINE - len("Message-ID: "):
        raise UnsendableMessage("the mail cannot be built: the Message-ID is not one <left@right> ASCII line")
    return Field("Message-ID", "Message-ID: " + message_id)
