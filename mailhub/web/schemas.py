"""Marshmallow schemas of the API's requests and answers (and of its OpenAPI spec)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from marshmallow import Schema, ValidationError, fields, validate

from mailhub.header_safety import ENCODED_WORD, FORBIDDEN_CHARACTERS, address_problem, header_value_problem

MAX_SUBJECT = 255
MAX_USERNAME = 100
MAX_BODY_BYTES = 64 * 1024
MAX_TASK_ID = 64

#: The header rules (`mailhub.header_safety`) for the OpenAPI spec, as JSON
#: Schema patterns: no forbidden character, no encoded word anywhere.
_SAFE = f"(?![\\s\\S]*{ENCODED_WORD})"
HEADER_VALUE_PATTERN = f"^{_SAFE}[^{FORBIDDEN_CHARACTERS}]*$"
NOT_BLANK_PATTERN = r"\S"
#: ...with at least one character that is not white space.
SUBJECT_PATTERN = f"^{_SAFE}[^{FORBIDDEN_CHARACTERS}]*[^\\s{FORBIDDEN_CHARACTERS}][^{FORBIDDEN_CHARACTERS}]*$"

#: One address as `deliverable_address` takes it, for the OpenAPI spec (no
#: `format: email`: that allows special-use domains such as `.test`, which
#: the validator refuses). Every address it matches is accepted; the
#: validator takes more than it says (longer parts, more dots, other
#: letters, internationalized domains), because the validator's limits are
#: in UTF-8 bytes: a local part of at most three dot-separated atoms and 60
#: characters (ASCII or Latin-1, CJK and Hangul letters; no `%` or `!`:
#: relay routing), at most 180 bytes; a domain of two to four DNS labels of
#: up to 15 characters (no `--` in the third and fourth place, which IDNA
#: refuses), the last ending with a letter and not special-use. So at most
#: 244 bytes, under the validator's 254.
_LOCAL = "A-Za-z0-9#$&'*+/=?^_`{|}~\\-\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff\u4e00-\u9fff\uac00-\ud7a3"
_LABEL = "(?![A-Za-z0-9]{2}--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,13}[A-Za-z0-9])?"
_SPECIAL_USE = "|".join("".join(f"[{c.upper()}{c}]" for c in name) for name in SPECIAL_USE_DOMAIN_NAMES)
_TOP_LABEL = f"(?!(?:{_SPECIAL_USE})$)(?![A-Za-z0-9]{{2}}--)(?:[A-Za-z0-9][A-Za-z0-9-]{{0,13}})?[A-Za-z]"
ADDRESS_PATTERN = (
    f"^{_SAFE}[{_LOCAL}]{{1,28}}(?:\\.[{_LOCAL}]{{1,15}}){{0,2}}@(?:{_LABEL}\\.){{1,3}}{_TOP_LABEL}$"
)


class Text(fields.String):
    """A string that is valid Unicode: JSON escapes can smuggle in lone surrogates."""

    def _deserialize(
        self, value: object, attr: str | None, data: Mapping[str, object] | None, **kwargs: object
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("Not valid Unicode text (lone surrogate).") from None
        return text


def header_safe(value: str) -> None:
    """Refuse what may not reach a header (see `mailhub.header_safety`)."""
    problem = header_value_problem(value)
    if problem is not None:
        raise ValidationError(problem)


def not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be empty.")


def body_size(value: str) -> None:
    if len(value.encode("utf-8")) > MAX_BODY_BYTES:
        raise ValidationError(f"Must be at most {MAX_BODY_BYTES} bytes (UTF-8).")


def deliverable_address(value: str) -> None:
    problem = _address_verdict(value)
    if problem is not None:
        raise ValidationError(problem)


@functools.lru_cache(maxsize=4096)
def _address_verdict(value: str) -> str | None:
    """Why `value` is refused as a recipient, or None. Cached: a site's mail
    goes to few addresses again and again, and the validator is a tenth of a
    submit's CPU (`bench.enqueue --profile`)."""
    problem = address_problem(value)
    if problem is not None:
        return problem
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return f"Not a valid email address: {exc}"
    return None


def task_id_format(value: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValidationError("Not a valid task id (a UUID).") from None


class EmailRequestSchema(Schema):
    """The body of `POST /api/v1/email/received`."""

    to = Text(
        required=True,
        validate=[validate.Length(max=254), deliverable_address],
        metadata={
            "example": "user@example.com",
            "pattern": ADDRESS_PATTERN,
            "description": "One address. Special-use domains (`.test`, `.local`, `.invalid`...) are "
            "refused; so are `%` and `!` before the @.",
        },
    )
    subject = Text(
        required=True,
        validate=[validate.Length(min=1, max=MAX_SUBJECT), not_blank, header_safe],
        metadata={"example": "Hello", "pattern": SUBJECT_PATTERN},
    )
    body = Text(
        required=True,
        validate=[not_blank, body_size],
        metadata={
            "example": "{username}님 안녕하세요!",
            "minLength": 1,
            "pattern": NOT_BLANK_PATTERN,
            "description": "`{username}` is replaced with `username`.",
        },
    )
    username = Text(
        load_default="",
        validate=[validate.Length(max=MAX_USERNAME), header_safe],
        metadata={"example": "홍길동", "pattern": HEADER_VALUE_PATTERN},
    )


class TaskQuerySchema(Schema):
    task_id = Text(required=True, validate=[validate.Length(max=MAX_TASK_ID), task_id_format])


class QueuedSchema(Schema):
    task_id = fields.String(required=True, metadata={"format": "uuid"})
    status = fields.String(required=True, metadata={"enum": ["queued"]})
    result_url = fields.String(required=True)


class ResultSchema(Schema):
    """A task's result document; the live streams send the same document."""

    task_id = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": ["pending", "success", "failed"]})
    to = fields.String(required=True)
    attempts = fields.Integer(required=True)
    reason = fields.String(
        metadata={"description": "Why it failed, as a short fixed phrase (status failed only)."}
    )
    last_error = fields.String(
        metadata={"description": "What kind of failure the last attempt met, while a retry waits."}
    )
    next_attempt_at = fields.String(metadata={"description": "When the next attempt is due."})
    seq = fields.Integer(required=True, metadata={"description": "Transition number, from 1."})
    event = fields.String(
        required=True, metadata={"enum": ["queued", "attempt", "retry", "success", "failed", "requeued"]}
    )
    at = fields.String(required=True, metadata={"description": "When the transition happened."})


class ErrorDetailSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    field_errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), data_key="fields")
    field_codes = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={
            "description": "Forms only: each field's problem as a code, for messages in the visitor's "
            "language: required, too_long, single_line, control, header, email, invalid, file."
        },
    )
    field_max = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "Forms only: the limit of each `too_long` field."},
    )


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)
