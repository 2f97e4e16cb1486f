"""Build a mail from its parts, flatten it to the bytes SMTP sends, and check them.

The check does not trust the interpreter: before Python 3.11.10 / 3.12.5
(CVE-2024-6923) the `email` package folds a decoded encoded word back into a
header without checking it for line breaks. So after flattening, the header
block is read again: every header line must be one mailhub wrote, once, with
no line break in its value, and an address header must still hold the
addresses mailhub put there. A mail that fails is never sent.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from email import policy
from email.errors import MessageError
from email.headerregistry import Address, AddressHeader, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate, parseaddr

from aiosmtplib.email import extract_recipients, extract_sender, flatten_message

from mailhub.errors import UnsendableMessage
from mailhub.header_safety import address_problem, header_value_problem
from mailhub.store.tasks import Attempt

PLACEHOLDER = "{username}"


def render_body(body: str, username: str) -> str:
    """Replace `{username}` with the literal name; nothing else is interpreted."""
    return body.replace(PLACEHOLDER, username)


#: Headers whose values repeat from mail to mail (the sender, a form's usual
#: recipient, the date within a second, the MIME headers); Subject and
#: Message-ID are new every time and not worth keeping.
_REPEATING = frozenset({"from", "to", "date", "mime-version", "content-type", "content-transfer-encoding"})
#: Parsed headers kept before the cache starts over.
_CACHE_SIZE = 1024


class _FoldedOnceHeader(BaseHeader):
    """A header that remembers its folded form for each way of folding it."""

    def fold(self, *, policy: Policy) -> str:
        key = (policy.linesep, getattr(policy, "utf8", False), policy.max_line_length)
        folds = self.__dict__.setdefault("_folds", {})
        if key not in folds:
            folds[key] = super().fold(policy=policy)
        return folds[key]


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard header classes and parsed headers, each built once.

    HeaderRegistry makes a new class on every lookup, and parsing and folding
    an address header costs more than the rest of the message. Parsed headers
    are immutable, so a repeating one is parsed and folded once. The output
    is unchanged.
    """

    def __init__(self) -> None:
        super().__init__(base_class=_FoldedOnceHeader)
        self._parsed: dict[tuple[str, str], BaseHeader] = {}

    @functools.cache  # noqa: B019 - one registry for the process
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)

    def __call__(self, name: str, value: str) -> BaseHeader:
        if name.lower() not in _REPEATING:
            return super().__call__(name, value)
        key = (name, value)
        header = self._parsed.get(key)
        if header is None:
            if len(self._parsed) >= _CACHE_SIZE:
                self._parsed.clear()  # simpler than LRU: the repeating few come back at once
            header = self._parsed[key] = super().__call__(name, value)
        return header


_REGISTRY = _CachedHeaderRegistry()
_POLICY = policy.default.clone(header_factory=_REGISTRY)


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
        """Why a value that may come from a visitor may not go into a header, or None."""
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


def build_message(parts: MessageParts) -> EmailMessage:
    """The mail of `parts`: UTF-8 text (and its HTML alternative), its headers, the current Date.

    Raises `UnsendableMessage` for a value the header rules or the `email`
    package refuse.
    """
    problem = parts.problem()
    if problem is not None:
        raise UnsendableMessage(f"the mail cannot be built: {problem}")
    message = EmailMessage(policy=_POLICY)
    try:
        message["From"] = _sender(parts.mail_from, parts.from_name)
        message["To"] = parts.to
        if parts.reply_to:
            message["Reply-To"] = parts.reply_to
        message["Subject"] = parts.subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = parts.message_id
        message.set_content(parts.text, charset="utf-8")
        if parts.html:
            message.add_alternative(parts.html, subtype="html", charset="utf-8")
    except (ValueError, MessageError) as exc:
        raise UnsendableMessage(f"the mail cannot be built: {exc}") from exc
    return message


def _sender(mail_from: str, display_name: str) -> str:
    if not display_name:
        return mail_from
    return str(Address(display_name=display_name, addr_spec=parseaddr(mail_from)[1]))


@dataclass(frozen=True)
class OutgoingMail:
    """A mail ready for one SMTP transaction: its envelope and its checked bytes."""

    sender: str
    recipients: tuple[str, ...]
    #: An envelope address is not ASCII: the server must offer SMTPUTF8.
    utf8: bool
    #: The 8-bit form, for servers that offer 8BITMIME (nearly all).
    data: bytes
    message: EmailMessage

    def seven_bit_data(self) -> bytes:
        """The 7-bit form, for a server without 8BITMIME, checked like `data`."""
        return flatten_checked(self.message, utf8=self.utf8, eight_bit=False)


def prepare(message: EmailMessage) -> OutgoingMail:
    """`message` flattened and checked, with the envelope its headers name.

    Raises `UnsendableMessage` if the flattened headers are not the ones written.
    """
    try:
        sender = extract_sender(message)
        recipients = tuple(extract_recipients(message))
    except ValueError as exc:
        raise UnsendableMessage(f"the mail has no usable envelope: {exc}") from exc
    if not sender or not recipients:
        raise UnsendableMessage("the mail has no usable envelope: no sender or no recipient address")
    utf8 = not (sender + "".join(recipients)).isascii()
    data = flatten_checked(message, utf8=utf8, eight_bit=True)
    return OutgoingMail(sender, recipients, utf8, data, message)


def flatten_checked(message: EmailMessage, *, utf8: bool, eight_bit: bool) -> bytes:
    """The bytes SMTP sends for `message` (as aiosmtplib flattens them), checked."""
    try:
        data = flatten_message(message, utf8=utf8, cte_type="8bit" if eight_bit else "7bit")
    except (ValueError, MessageError) as exc:  # a patched interpreter's own check, among others
        raise UnsendableMessage(f"the mail cannot be flattened: {exc}") from exc
    check_header_block(data, message)
    return data


#: A header field name (RFC 5322: printable ASCII but the colon).
_FIELD_NAME = re.compile(r"[!-9;-~]+")
#: Never in a header line or a decoded value: every control character but
#: the tab of folding white space, and the Unicode line breaks.
_BREAKING = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def check_header_block(data: bytes, message: EmailMessage) -> None:
    """Raise `UnsendableMessage` unless `data`'s headers are exactly those of `message`.

    Each header of `message` must appear once (unfolded), no other may, no
    line or decoded value may hold a line break or a control character, and
    each address header must name the same addresses, in order.
    """
    head, end, _ = data.partition(b"\r\n\r\n")
    if not end:
        raise UnsendableMessage("header check failed: no end of the header block")
    fields = _unfold(head.decode("utf-8", "surrogateescape"))
    written = Counter(name.lower() for name in message.keys())
    found = Counter(name.lower() for name, _ in fields)
    if found != written:
        odd = sorted((found - written) + (written - found))
        raise UnsendableMessage(f"header check failed: {odd} added, repeated or missing")
    for name, value in fields:
        _check_field(name, value, message)


def _unfold(head: str) -> list[tuple[str, str]]:
    """The (name, unfolded value) of each header line; raise on a line mailhub cannot have made."""
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if _BREAKING.search(line):
            raise UnsendableMessage("header check failed: a line break or control character in a header")
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise UnsendableMessage("header check failed: a line that is not a header field")
        fields.append((name, value))
    return fields


def _check_field(name: str, value: str, message: EmailMessage) -> None:
    """Raise unless the flattened `value` reads back as safe text with the addresses written."""
    if not issubclass(_REGISTRY[name], AddressHeader) and "=?" not in value:
        return  # nothing to decode: `_unfold` has seen the text as a reader will
    read = _REGISTRY(name, value.lstrip(" \t"))
    if _BREAKING.search(str(read)):
        raise UnsendableMessage(f"header check failed: {name} decodes to a line break or control character")
    if isinstance(read, AddressHeader):
        before = [address.addr_spec for address in message[name].addresses]
        after = [address.addr_spec for address in read.addresses]
        if before != after:
            raise UnsendableMessage(f"header check failed: {name} does not hold the addresses mailhub wrote")
