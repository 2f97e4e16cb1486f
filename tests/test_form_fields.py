"""Posted values against the declared fields: only declared ones kept, each rule enforced."""

from __future__ import annotations

import pytest

from mailhub.forms.definitions import FieldRule, FormDefinition
from mailhub.forms.fields import FieldsInvalid, clean_values

FORM = FormDefinition(
    form_id="f",
    to=("owner@example.com",),
    subject="s",
    text="t",
    fields=(
        FieldRule("name", required=True, max_length=10),
        FieldRule("email", type="email", max_length=254),
        FieldRule("message", multiline=True, max_length=100),
    ),
)


def _codes(posted: dict) -> dict[str, str]:
    with pytest.raises(FieldsInvalid) as refused:
        clean_values(FORM, posted)
    return {name: problem.code for name, problem in refused.value.problems.items()}


def test_only_declared_fields_are_kept_and_trimmed():
    posted = {"name": "  Kim ", "to": "x@example.net", "bcc": "y@example.net", "message": "a\r\nb\rc"}
    assert clean_values(FORM, posted) == {"name": "Kim", "email": "", "message": "a\nb\nc"}


@pytest.mark.parametrize(
    ("posted", "codes"),
    [
        ({}, {"name": "required"}),
        ({"name": "   "}, {"name": "required"}),
        ({"name": "x" * 11}, {"name": "too_long"}),
        ({"name": "a\r\nBcc: x"}, {"name": "header"}),
        ({"name": "a\x00b"}, {"name": "header"}),
        # Unicode line breaks are refused with the header rules (header_safety), like CR and LF.
        ({"name": "a\u2028b"}, {"name": "header"}),
        ({"name": "a\x85b"}, {"name": "header"}),
        ({"name": "Kim", "email": "not-an-address"}, {"email": "email"}),
        ({"name": "Kim", "email": "a@example.org\nBcc: x@example.net"}, {"email": "header"}),
        ({"name": "Kim", "email": "Kim <a@example.org>"}, {"email": "email"}),
        ({"name": "Kim", "message": "a\x00b"}, {"message": "control"}),
        ({"name": "Kim", "message": "x" * 101}, {"message": "too_long"}),
        ({"name": ["Kim"]}, {"name": "invalid"}),
        ({"name": "\ud800"}, {"name": "invalid"}),
    ],
)
def test_each_rule_has_its_code(posted, codes):
    assert _codes(posted) == codes


def test_the_json_document_keeps_the_contract_shape_and_adds_codes():
    with pytest.raises(FieldsInvalid) as refused:
        clean_values(FORM, {"name": ""})
    error = refused.value.document()["error"]
    assert error["code"] == "validation_failed"
    assert error["fields"] == {"name": ["This field is required."]}
    assert error["field_codes"] == {"name": "required"}
