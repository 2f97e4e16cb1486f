"""The address headers of a mail: From (with its display name), To, Reply-To.

A plain `local@domain` (a dot-atom without `=` or `?`, so no encoded-word
look-alike) is written as it is, as the `email` package would; a display name
in front of one is written by `encoded_words`. Any other value is folded by
the `email` package, once per distinct value: the fold is read back and
checked (one field of that name, no line break or control character in it or
in what it decodes to, the same addresses in order), then kept in a bounded
cache, since the sender and a form's recipients come back mail after mail.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email import policy
from email.errors import MessageError
from email.headerregistry import Address, AddressHeader, BaseHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import parseaddr

from mailhub.delivery.encoded_words import LINE, mailbox_field
from mailhub.delivery.header_check import BREAKING, Field, unfold
from mailhub.errors import UnsendableMessage

#: Distinct values kept folded and checked, per kind.
CACHE_SIZE = 1024

#: An address written as it is: a dot-atom local part without `=` or `?`
#: and a host name.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_+'-]+(?:\.[A-Za-z0-9_+'-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)


@dataclass(frozen=True)
class AddressHeaderValue:
    """An address header's value and the addresses it names, in order; `field` writes it."""

    name: str
    #: The value as given, or the plain address under `display_name`.
    value: str
    addresses: tuple[str, ...]
    #: A plain `local@domain`: written without the `email` package.
    plain: bool = False
    #: The display name in front of a plain address ("" for none).
    display_name: str = ""

    def field(self, *, utf8: bool) -> Field:
        """The header field, folded and checked.

        `utf8`: for a mail sent with SMTPUTF8 (8-bit text stays as it is;
        without it, a non-ASCII display name becomes encoded words).
        """
        if not self.plain:
            return _folded(self.name, self.value, utf8)
        if self.display_name:
            return mailbox_field(self.name, self.display_name, self.value)
        return Field(self.name, f"{self.name}: {self.value}")


def address_header(name: str, value: str) -> AddressHeaderValue:
    """The address header `name: value`; raises `UnsendableMessage` if the `email` package refuses it."""
    if _is_plain(name, value):
        return AddressHeaderValue(name, value, (value,), plain=True)
    return _parsed(name, value)


def sender_header(mail_from: str, display_name: str) -> AddressHeaderValue:
    """From: `mail_from` (the owner's setting), or its address under `display_name` if one is given."""
    if not display_name:
        return address_header("From", mail_from)
    addr_spec = _addr_spec(mail_from)
    if _is_plain("From", addr_spec):
        return AddressHeaderValue("From", addr_spec, (addr_spec,), plain=True, display_name=display_name)
    try:
        value = str(Address(display_name=display_name, addr_spec=addr_spec))
    except (ValueError, MessageError) as exc:
        raise UnsendableMessage(f"the mail cannot be built: From: {exc}") from exc
    return address_header("From", value)


def _is_plain(name: str, value: str) -> bool:
    return len(name) + 2 + len(value) <= LINE and _PLAIN_ADDRESS.fullmatch(value) is not None


@functools.lru_cache(maxsize=CACHE_SIZE)
def _addr_spec(mail_from: str) -> str:
    return parseaddr(mail_from)[1]


def _read(name: str, value: str, writing: EmailPolicy[EmailMessage]) -> tuple[BaseHeader, tuple[str, ...]]:
    """The header `name: value` as `writing` parses it, and the addresses it names."""
    try:
        header: BaseHeader = writing.header_factory(name, value)
    except (ValueError, MessageError) as exc:
        raise UnsendableMessage(f"the mail cannot be built: {name}: {exc}") from exc
    assert isinstance(header, AddressHeader), name  # From, To and Reply-To only
    return header, tuple(address.addr_spec for address in header.addresses)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parsed(name: str, value: str) -> AddressHeaderValue:
    return AddressHeaderValue(name, value, _read(name, value, policy.SMTP)[1])


@functools.lru_cache(maxsize=CACHE_SIZE)
def _folded(name: str, value: str, utf8: bool) -> Field:
    """`name: value` as the `email` package folds it, read back and checked once.

    The fold must be one field of that name, decode to text without a line
    break or control character, and name the same addresses.
    """
    writing = policy.SMTPUTF8 if utf8 else policy.SMTP
    try:
        lines = _read(name, value, writing)[0].fold(policy=writing).removesuffix("\r\n")
    except (ValueError, MessageError) as exc:  # a patched interpreter's own check, among others
        raise UnsendableMessage(f"the mail cannot be built: {name}: {exc}") from exc
    found = unfold(lines)
    if len(found) != 1 or found[0][0] != name:
        raise UnsendableMessage(f"header check failed: {name} folds into other header lines")
    read, addresses = _read(name, found[0][1].lstrip(" \t"), writing)
    if BREAKING.search(str(read)):
        raise UnsendableMessage(f"header check failed: {name} decodes to a line break or control character")
    if addresses != _parsed(name, value).addresses:
        raise UnsendableMessage(f"header check failed: {name} does not hold the addresses mailhub wrote")
    return Field(name, lines)
