"""The request schema's header rules, and the OpenAPI patterns that describe them."""

from __future__ import annotations

import re

import pytest
from marshmallow import ValidationError

from mailhub.header_safety import address_problem, header_value_problem
from mailhub.web.openapi import build_spec
from mailhub.web.schemas import EmailRequestSchema
from tests.test_header_safety import ALLOWED, CONTROLS, ENCODED_WORDS, LINE_BREAKS

VALID = {"to": "user@example.com", "subject": "Hello", "body": "Hi", "username": "Kim"}
SAMPLES = [
    *ALLOWED,
    *ENCODED_WORDS,
    *(f"Hello{c}Bcc: victim@evil.com" for c in LINE_BREAKS + CONTROLS),
    "user@example.com",
    "o'brien+tag@example.com",
    "홍길동@example.com",
    "victim%evil.com@example.org",
    "evil.com!victim@example.org",
    "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org",
    "   ",
]
RULES = {"to": address_problem, "subject": header_value_problem, "username": header_value_problem}


def accepted(field: str, value: str) -> bool:
    try:
        EmailRequestSchema().load({**VALID, field: value})
    except ValidationError:
        return False
    return True


@pytest.fixture(scope="module")
def patterns() -> dict[str, str]:
    properties = build_spec()["components"]["schemas"]["EmailRequest"]["properties"]
    return {field: properties[field]["pattern"] for field in RULES}


@pytest.mark.parametrize("field", sorted(RULES))
def test_the_spec_patterns_say_what_the_validator_accepts(patterns, field):
    # Only syntax Python's re and ECMA 262 (JSON Schema) read alike; fullmatch
    # because Python's `$` also matches before a final newline.
    pattern = re.compile(patterns[field])
    for value in SAMPLES:
        matches = pattern.fullmatch(value) is not None
        if accepted(field, value):
            assert matches, (field, value)
        if RULES[field](value) is not None:
            assert not matches, (field, value)


@pytest.mark.parametrize("field", sorted(RULES))
@pytest.mark.parametrize("value", [*ENCODED_WORDS[:3], "a\u2028b", "a\x85b", "a\x9fb"])
def test_each_header_field_refuses_encoded_words_and_line_breaks(field, value):
    with pytest.raises(ValidationError) as refused:
        EmailRequestSchema().load({**VALID, field: value})
    assert set(refused.value.normalized_messages()) == {field}
