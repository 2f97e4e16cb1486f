"""Marshmallow schemas of the API's requests and answers (and of its OpenAPI spec)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from email_validator import EmailNotValidError, validate_email
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
#: ...and no `%` or `!` before the @ (a domain holds neither).
ADDRESS_PATTERN = f"^{_SAFE}[^%!{FORBIDDEN_CHARACTERS}]+$"


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
    problem = address_problem(value)
    if problem is not None:
        raise ValidationError(problem)
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(f"Not a valid email address: {exc}") from None


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
        metadata={"example": "user@example.com", "format": "email", "pattern": ADDRESS_PATTERN},
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
