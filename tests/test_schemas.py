"""The request schema's header rules, and the OpenAPI patterns that describe them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from mailhub.forms.definitions import FormDefinition, capture_contact_form
from mailhub.forms.fields import clean_values
from mailhub.header_safety import address_problem, header_value_problem
from mailhub.web.openapi import build_spec
from mailhub.web.openapi_forms import fields_schema
from mailhub.web.schemas import ADDRESS_PATTERN, EmailRequestSchema
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


@settings(max_examples=300, deadline=None)
@given(st.from_regex(ADDRESS_PATTERN, fullmatch=True))
def test_every_address_the_spec_describes_is_one_the_validator_takes(address):
    assert accepted("to", address), address


@pytest.mark.parametrize(
    "address", ["kim@mail.test", "kim@EXAMPLE.LOCAL", "kim@a.invalid", "kim@b.onion", "kim@localhost"]
)
def test_special_use_domains_are_refused_and_the_spec_says_so(patterns, address):
    assert not accepted("to", address)
    assert re.fullmatch(patterns["to"], address) is None


def test_the_spec_links_each_submit_to_the_result_and_the_events_of_its_task():
    spec = build_spec({"contact": capture_contact_form("you@example.com")})
    operations = {
        operation.get("operationId"): operation
        for path in spec["paths"].values()
        for operation in path.values()
    }
    for submit in ("submitEmail", "postForm", "postForm_contact"):
        links = operations[submit]["responses"]["200"]["links"]
        assert {link["operationId"] for link in links.values()} == {"getResult", "followEvents"}
        assert all(link["parameters"] == {"task_id": "$response.body#/task_id"} for link in links.values())
    assert {p["name"] for p in operations["getResult"]["parameters"]} == {"task_id"}
    assert "task_id" in {p["name"] for p in operations["followEvents"]["parameters"]}


CONTACT = capture_contact_form("you@example.com")


def _posts_the_spec_allows(form: FormDefinition) -> st.SearchStrategy[dict[str, str]]:
    fields = fields_schema(form)["properties"]
    return st.fixed_dictionaries(
        {
            name: st.from_regex(rule["pattern"], fullmatch=True).filter(
                lambda v, n=rule["maxLength"]: len(v) <= n
            )
            for name, rule in fields.items()
        }
    )


@settings(max_examples=200, deadline=None)
@given(_posts_the_spec_allows(CONTACT))
def test_every_post_a_form_path_describes_is_one_the_form_takes(values):
    clean_values(CONTACT, values)
