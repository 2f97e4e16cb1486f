"""A visitor's posted values, checked against the form's declared fields.

Only declared fields are kept; anything else a page posts (a `to`, a `bcc`,
a thousand extras) is dropped here and never reaches the mail. Each problem
has a code (for pages in the visitor's language) and an English message
(for the JSON API).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from mailhub import header_safety
from mailhub.errors import ValidationFailed
from mailhub.forms.definitions import FieldRule, FormDefinition
from mailhub.header_safety import header_value_problem

#: Control characters a multiline value may not hold (tab and line feed it may).
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Problem:
    """What is wrong with one value: a stable code, its English text, and its numbers."""

    code: str
    message: str
    max: int = 0


class FieldsInvalid(ValidationFailed):
    """422 listing each field's problem; `problems` keeps the codes for translated pages."""

    def __init__(self, problems: dict[str, Problem]) -> None:
        super().__init__("Some fields are invalid.", {name: [p.message] for name, p in problems.items()})
        self.problems = problems

    def document(self) -> dict[str, object]:
        document = super().document()
        error = document["error"]
        assert isinstance(error, dict)  # built just above by ApiError.document
        error["field_codes"] = {name: p.code for name, p in self.problems.items()}
        # The number a translated "too long" needs (the drop-in script's {max}).
        limits = {name: p.max for name, p in self.problems.items() if p.max}
        if limits:
            error["field_max"] = limits
        return document


def clean_values(form: FormDefinition, posted: Mapping[str, object]) -> dict[str, str]:
    """The declared fields' values, checked and trimmed; `FieldsInvalid` lists every problem."""
    values: dict[str, str] = {}
    problems: dict[str, Problem] = {}
    for rule in form.fields:
        raw = posted.get(rule.name, "")
        if not isinstance(raw, str):
            problems[rule.name] = Problem("invalid", "Must be text.")
            continue
        value = _normalised(raw, rule)
        problem = value_problem(rule, value)
        if problem:
            problems[rule.name] = problem
        else:
            values[rule.name] = value
    if problems:
        raise FieldsInvalid(problems)
    return values


def _normalised(raw: str, rule: FieldRule) -> str:
    if rule.multiline:
        raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    return raw.strip()


def value_problem(rule: FieldRule, value: str) -> Problem | None:
    """What is wrong with `value` for `rule`, or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return Problem("invalid", "Not valid Unicode text.")
    if not value:
        return Problem("required", "This field is required.") if rule.required else None
    if len(value) > rule.max_length:
        return Problem("too_long", f"Must be at most {rule.max_length} characters.", rule.max_length)
    if rule.multiline:
        if _CONTROL_IN_TEXT.search(value):
            return Problem("control", "Must not contain control characters.")
        return None
    header_problem = header_value_problem(value)
    if header_problem:
        return Problem("header", header_problem)
    if value.splitlines() != [value]:
        return Problem("single_line", "Must be a single line.")
    return address_problem(value) if rule.type == "email" else None


def address_problem(value: str) -> Problem | None:
    """What keeps `value` from being one deliverable address (as the contract's `to`), or None."""
    routing = header_safety.address_problem(value)
    if routing:
        return Problem("email", routing)
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return Problem("email", f"Not a valid email address: {exc}")
    return None
