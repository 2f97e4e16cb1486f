"""The forms door in the OpenAPI spec: `POST /api/v1/forms/{form_id}`, and each defined form's own path.

A form's path carries its fields' rules as JSON Schema (required, length,
single line or multiline, an address), as `forms.fields` checks them, so a
client (or schemathesis) can tell a post the form takes from one it refuses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from apispec import APISpec

from mailhub.forms.definitions import FieldRule, FormDefinition
from mailhub.forms.templates import NAME
from mailhub.web.openapi_parts import IDEMPOTENCY_KEY, error_answer, queued_answer
from mailhub.web.schemas import ADDRESS_PATTERN, HEADER_VALUE_PATTERN, SUBJECT_PATTERN

PATH = "/api/v1/forms/{form_id}"
#: What a multiline value may not hold (`forms.fields`): controls but tab, line feed, carriage return.
_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
#: A multiline value, without and with at least one character that is not white space.
_TEXT = f"^[^{_CONTROLS}]*$"
_TEXT_NOT_BLANK = f"^[^{_CONTROLS}]*[^\\s{_CONTROLS}][^{_CONTROLS}]*$"
_MEDIA = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
#: A form's own path leaves multipart out: a part's name is a MIME header, where the
#: control characters a field name may hold in JSON make the post malformed (400).
_FORM_MEDIA = _MEDIA[:2]
_EXTRAS = (
    "Other names are dropped, except the CAPTCHA widget's token (`cf-turnstile-response`, "
    "`h-captcha-response` or `g-recaptcha-response`) and `lang` (`en`, `ko`) for the pages."
)


def add_form_paths(spec: APISpec, forms: Mapping[str, FormDefinition]) -> None:
    """The generic forms path (404 for an id no form has), then one path per form in `forms`."""
    spec.tag(
        {
            "name": "forms",
            "description": "Forms defined on the server (FORMS_FILE): the page sends only field "
            "values; recipients and wording are the owner's.",
        }
    )
    known = "|".join(re.escape(form_id) for form_id in sorted(forms))
    others = f"^(?!(?:{known})$){NAME}$" if known else f"^{NAME}$"
    form_id = {
        "name": "form_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": others},
    }
    anything = {
        "type": "object",
        "additionalProperties": True,
        "description": "The form's fields. " + _EXTRAS,
    }
    generic = _operation("postForm", "Post a form", [form_id], anything, _MEDIA)
    spec.path(path=PATH, operations={"post": generic})
    for form in forms.values():
        summary = f"Post the `{form.form_id}` form (also as multipart/form-data)"
        operation = _operation(f"postForm_{form.form_id}", summary, [], fields_schema(form), _FORM_MEDIA)
        spec.path(path=PATH.replace("{form_id}", form.form_id), operations={"post": operation})


def fields_schema(form: FormDefinition) -> dict[str, Any]:
    """The JSON Schema of a post `form` takes: each field's rule (values are trimmed first)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {rule.name: _field_schema(rule) for rule in form.fields},
        "additionalProperties": True,
        "description": "Values are trimmed of white space before they are checked. " + _EXTRAS,
    }
    required = [rule.name for rule in form.fields if rule.required]
    if required:
        schema["required"] = required
    return schema


def _field_schema(rule: FieldRule) -> dict[str, Any]:
    if rule.type == "email":
        pattern = ADDRESS_PATTERN if rule.required else f"^$|{ADDRESS_PATTERN}"
    elif rule.multiline:
        pattern = _TEXT_NOT_BLANK if rule.required else _TEXT
    else:
        pattern = SUBJECT_PATTERN if rule.required else HEADER_VALUE_PATTERN
    field: dict[str, Any] = {"type": "string", "maxLength": rule.max_length, "pattern": pattern}
    if rule.required:
        field["minLength"] = 1
    return field


def _operation(
    operation_id: str,
    summary: str,
    parameters: list[dict[str, Any]],
    body: dict[str, Any],
    media: tuple[str, ...],
) -> dict[str, Any]:
    return {
        "tags": ["forms"],
        "operationId": operation_id,
        "summary": summary,
        "description": (
            "Takes JSON, urlencoded or multipart (text fields only) bodies. A request whose "
            "`Accept` prefers `text/html` (a browser's plain post) gets `303 See Other` to the "
            "form's `redirect` or the built-in thank-you page, and its refusals as HTML pages; "
            "every other request gets these JSON answers. `Idempotency-Key` works as on "
            "`/api/v1/email/received`."
        ),
        "parameters": [*parameters, IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {kind: {"schema": body} for kind in media}},
        "responses": {
            "200": queued_answer("Queued; follow it with result_url, SSE or WebSocket"),
            "303": {"description": "A plain HTML post: to the form's redirect or /forms/thanks"},
            "400": error_answer("Not JSON, not UTF-8, or not an object"),
            "403": error_answer(
                "origin_not_allowed, or the CAPTCHA: captcha_missing, captcha_invalid "
                "(bad, expired or reused), captcha_unverifiable"
            ),
            "404": error_answer("form_not_found"),
            "409": error_answer("Idempotency-Key reused with another body"),
            "413": error_answer("Request too large, or too many fields"),
            "415": error_answer("Not JSON, urlencoded or multipart"),
            "422": error_answer("Invalid fields: `fields` and `field_codes` say which and why"),
            "429": error_answer("Too many posts from this client"),
            "503": error_answer("Queue unavailable"),
        },
    }
