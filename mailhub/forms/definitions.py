"""Form definitions: what a public page may post, and where the mail goes.

`FORMS_FILE` is TOML, one `[forms.<id>]` table per form (see the README's
"Forms" section). The owner decides recipients and wording; a visitor only
fills in fields. A mistake in the file stops start-up with one line naming
the form and the key (`SettingsError`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from limits import parse_many

from mailhub.errors import SettingsError
from mailhub.forms.templates import NAME, placeholders
from mailhub.header_safety import header_value_problem
from mailhub.store.rate_limit import rate_windows

CAPTCHAS = ("turnstile", "hcaptcha", "recaptcha")
#: The field each CAPTCHA widget posts its token in.
TOKEN_FIELDS = {
    "turnstile": "cf-turnstile-response",
    "hcaptcha": "h-captcha-response",
    "recaptcha": "g-recaptcha-response",
}
FIELD_TYPES = ("text", "email")
MAX_FIELDS = 50
MAX_LENGTH = 64 * 1024
DEFAULT_MAX_LENGTH = 1000
DEFAULT_MAX_LENGTH_MULTILINE = 10_000

_FIELD_NAME = re.compile(NAME)
_FORM_KEYS = {
    "to",
    "subject",
    "text",
    "html",
    "reply_to",
    "redirect",
    "error_redirect",
    "captcha",
    "fields",
    "origins",
    "honeypot",
    "rate_limit",
    "from_name",
    "confirmation",
}
_FIELD_KEYS = {"required", "type", "max_length", "multiline"}


@dataclass(frozen=True)
class FieldRule:
    """One field a form takes, and what its value must be."""

    name: str
    required: bool = False
    #: "text" or "email".
    type: str = "text"
    max_length: int = DEFAULT_MAX_LENGTH
    #: Keeps line breaks (the message body); a single-line field refuses them.
    multiline: bool = False


@dataclass(frozen=True)
class Confirmation:
    """The mail sent back to the visitor at the form's `reply_to` address."""

    subject: str
    text: str
    #: Confirmations one address may get in 24 hours (from every form together).
    per_day: int = 3


@dataclass(frozen=True)
class FormDefinition:
    """One form of FORMS_FILE, checked."""

    form_id: str
    to: tuple[str, ...]
    subject: str
    text: str
    fields: tuple[FieldRule, ...]
    html: str = ""
    #: The name of the email field whose value becomes Reply-To.
    reply_to: str = ""
    redirect: str = ""
    error_redirect: str = ""
    #: "", or one of CAPTCHAS.
    captcha: str = ""
    origins: tuple[str, ...] = ()
    honeypot: str = ""
    #: (amount, seconds) windows per client address for this form; none: only RATE_LIMIT.
    rate_windows: tuple[tuple[int, int], ...] = ()
    #: The From display name template; the address stays MAIL_FROM.
    from_name: str = ""
    confirmation: Confirmation | None = None

    def field(self, name: str) -> FieldRule | None:
        return next((rule for rule in self.fields if rule.name == name), None)

    @property
    def token_field(self) -> str:
        """Where the CAPTCHA widget posts its token ("" without a CAPTCHA)."""
        return TOKEN_FIELDS.get(self.captcha, "")


def load_forms_file(path: Path, captcha_secrets: Mapping[str, str]) -> dict[str, FormDefinition]:
    """Read and check FORMS_FILE; `SettingsError` names the form and key of a mistake."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"FORMS_FILE={str(path)!r} cannot be read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"FORMS_FILE={str(path)!r} is not valid TOML: {exc}") from None
    try:
        return parse_forms(data, captcha_secrets)
    except _Mistake as exc:
        raise SettingsError(f"FORMS_FILE={str(path)!r}: {exc}") from None


def parse_forms(data: Mapping[str, Any], captcha_secrets: Mapping[str, str]) -> dict[str, FormDefinition]:
    """Check a parsed forms document; `_Mistake` (a SettingsError) names the form and key."""
    extra = set(data) - {"forms"}
    if extra:
        raise _Mistake(f"unknown top-level key {sorted(extra)[0]!r} (only [forms.<id>] tables)")
    forms = data.get("forms")
    if not isinstance(forms, dict) or not forms:
        raise _Mistake("no forms: add a [forms.<id>] table")
    return {form_id: _form(form_id, table, captcha_secrets) for form_id, table in forms.items()}


def capture_contact_form(recipient: str) -> FormDefinition:
    """The example `contact` form of zero-config runs, addressed to DEMO_RECIPIENT."""
    return FormDefinition(
        form_id="contact",
        to=(recipient,),
        subject="Contact: {name}",
        text="From {name} <{email}>:\n\n{message}\n",
        fields=(
            FieldRule("name", required=True, max_length=100),
            FieldRule("email", required=True, type="email", max_length=254),
            FieldRule("message", required=True, max_length=5000, multiline=True),
        ),
        reply_to="email",
        from_name="{name} via mailhub",
    )


class _Mistake(SettingsError):
    """A mistake in the forms document (the path is added by the loader)."""


class _Form:
    """Reads one form's table, naming `forms.<id>.<key>` in every mistake."""

    def __init__(self, form_id: str, table: Any) -> None:
        if not re.fullmatch(NAME, form_id):
            raise _Mistake(f"forms.{form_id}: a form id is letters, digits, '_' and '-'")
        if not isinstance(table, dict):
            raise _Mistake(f"forms.{form_id}: must be a table")
        unknown = set(table) - _FORM_KEYS
        if unknown:
            raise _Mistake(f"forms.{form_id}: unknown key {sorted(unknown)[0]!r}")
        self.form_id, self.table = form_id, table

    def mistake(self, key: str, problem: str) -> _Mistake:
        return _Mistake(f"forms.{self.form_id}.{key}: {problem}")

    def text(self, key: str, *, required: bool = False) -> str:
        value = self.table.get(key, "")
        if not isinstance(value, str):
            raise self.mistake(key, "must be a string")
        if required and not value.strip():
            raise self.mistake(key, "is required")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.mistake(key, "must be a list of strings")
        return tuple(value)


def _form(form_id: str, table: Any, captcha_secrets: Mapping[str, str]) -> FormDefinition:
    reader = _Form(form_id, table)
    fields = _fields(reader)
    form = FormDefinition(
        form_id=form_id,
        to=_recipients(reader),
        subject=reader.text("subject", required=True),
        text=reader.text("text", required=True),
        html=reader.text("html"),
        fields=fields,
        reply_to=reader.text("reply_to"),
        redirect=_url(reader, "redirect"),
        error_redirect=_url(reader, "error_redirect"),
        captcha=_captcha(reader, captcha_secrets),
        origins=tuple(_origin(reader, item) for item in reader.strings("origins")),
        honeypot=reader.text("honeypot"),
        rate_windows=_rate_windows(reader),
        from_name=reader.text("from_name"),
        confirmation=_confirmation(reader),
    )
    _check_references(reader, form)
    return form


def _fields(reader: _Form) -> tuple[FieldRule, ...]:
    table = reader.table.get("fields")
    if not isinstance(table, dict) or not table:
        raise reader.mistake("fields", "is required: a table of the fields the form takes")
    if len(table) > MAX_FIELDS:
        raise reader.mistake("fields", f"at most {MAX_FIELDS} fields")
    return tuple(_field(reader, name, spec) for name, spec in table.items())


def _field(reader: _Form, name: str, spec: Any) -> FieldRule:
    key = f"fields.{name}"
    if not _FIELD_NAME.fullmatch(name):
        raise reader.mistake(key, "a field name is letters, digits, '_' and '-', starting with a letter")
    if name in TOKEN_FIELDS.values():
        raise reader.mistake(key, "is the CAPTCHA widget's own field; do not declare it")
    if not isinstance(spec, dict):
        raise reader.mistake(key, "must be a table such as { required = true }")
    unknown = set(spec) - _FIELD_KEYS
    if unknown:
        raise reader.mistake(f"{key}.{sorted(unknown)[0]}", "unknown key")
    for flag in ("required", "multiline"):
        if not isinstance(spec.get(flag, False), bool):
            raise reader.mistake(f"{key}.{flag}", "must be true or false")
    kind = spec.get("type", "text")
    if kind not in FIELD_TYPES:
        raise reader.mistake(f"{key}.type", f"must be one of {', '.join(FIELD_TYPES)}")
    multiline = spec.get("multiline", False)
    if multiline and kind == "email":
        raise reader.mistake(f"{key}.multiline", "an email field is a single line")
    default = DEFAULT_MAX_LENGTH_MULTILINE if multiline else DEFAULT_MAX_LENGTH
    length = spec.get("max_length", 254 if kind == "email" else default)
    if type(length) is not int or not 0 < length <= MAX_LENGTH:
        raise reader.mistake(f"{key}.max_length", f"must be a whole number from 1 to {MAX_LENGTH}")
    return FieldRule(name, spec.get("required", False), kind, length, multiline)


def _recipients(reader: _Form) -> tuple[str, ...]:
    addresses = reader.strings("to")
    if not addresses:
        raise reader.mistake("to", "is required: the addresses this form's mail goes to")
    for address in addresses:
        if not _is_address(address):
            raise reader.mistake("to", f"{address!r} is not an email address")
    return addresses


def _is_address(address: str) -> bool:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _url(reader: _Form, key: str) -> str:
    value = reader.text(key)
    if not value:
        return ""
    parts = urlsplit(value)
    local = value.startswith("/") and not value.startswith("//")
    if not value.isprintable() or not (local or (parts.scheme in ("http", "https") and parts.netloc)):
        raise reader.mistake(key, f"{value!r} is neither an http(s) URL nor a path starting with /")
    return value


def _captcha(reader: _Form, secrets: Mapping[str, str]) -> str:
    value = reader.text("captcha").lower()
    if not value:
        return ""
    if value not in CAPTCHAS:
        raise reader.mistake("captcha", f"must be one of {', '.join(CAPTCHAS)}")
    if not secrets.get(value):
        raise reader.mistake("captcha", f"{value} needs its secret: set {value.upper()}_SECRET")
    return value


def _origin(reader: _Form, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise reader.mistake("origins", f"{raw!r} is not an origin like https://www.example.com")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _rate_windows(reader: _Form) -> tuple[tuple[int, int], ...]:
    value = reader.text("rate_limit")
    if not value:
        return ()
    try:
        parse_many(value)
    except ValueError:
        raise reader.mistake("rate_limit", f"{value!r} is not a rate such as '5/minute;50/day'") from None
    return rate_windows(value)


def _confirmation(reader: _Form) -> Confirmation | None:
    table = reader.table.get("confirmation")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise reader.mistake("confirmation", "must be a table with subject and text")
    unknown = set(table) - {"subject", "text", "per_day"}
    if unknown:
        raise reader.mistake(f"confirmation.{sorted(unknown)[0]}", "unknown key")
    texts = []
    for key in ("subject", "text"):
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise reader.mistake(f"confirmation.{key}", "is required (a string)")
        texts.append(value)
    per_day = table.get("per_day", 3)
    if type(per_day) is not int or not 1 <= per_day <= 100:
        raise reader.mistake("confirmation.per_day", "must be a whole number from 1 to 100")
    return Confirmation(texts[0], texts[1], per_day)


def _check_references(reader: _Form, form: FormDefinition) -> None:
    """Every field a key names exists, and nothing multiline can reach a header."""
    names = {rule.name for rule in form.fields}
    templates = {"subject": form.subject, "text": form.text, "html": form.html, "from_name": form.from_name}
    if form.confirmation is not None:
        templates["confirmation.subject"] = form.confirmation.subject
        templates["confirmation.text"] = form.confirmation.text
    headers = ("subject", "from_name", "confirmation.subject")
    for key, template in templates.items():
        if key in headers and header_value_problem(template):
            raise reader.mistake(key, "must be one line without control characters")
        for name in placeholders(template):
            rule = form.field(name)
            if rule is None:
                raise reader.mistake(key, f"unknown placeholder {{{name}}} (fields: {', '.join(names)})")
            if key in headers and rule.multiline:
                raise reader.mistake(key, f"{{{name}}} is multiline and cannot go in a header")
    if form.reply_to:
        rule = form.field(form.reply_to)
        if rule is None or rule.type != "email":
            raise reader.mistake("reply_to", f"{form.reply_to!r} is not a field of type email")
    if form.honeypot and form.honeypot in names:
        raise reader.mistake("honeypot", f"{form.honeypot!r} is a real field; pick a name no one fills in")
    if form.confirmation is not None:
        if not form.captcha:
            raise reader.mistake("confirmation", "needs a captcha, or anyone could mail any address")
        if not form.reply_to:
            raise reader.mistake("confirmation", "is sent to the reply_to address: set reply_to")
