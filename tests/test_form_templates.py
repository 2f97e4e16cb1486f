"""Templates: `{field}` replaced literally, in one pass; values never evaluated or expanded again."""

from __future__ import annotations

import html

import pytest

from mailhub.forms.templates import placeholders, render

VALUES = {"name": "Kim", "other": "OTHER", "message": "m"}


@pytest.mark.parametrize(
    "typed",
    [
        "{other}",
        "{{x}}",
        "{name.__class__}",
        "{0}",
        "{name!r}",
        "%(name)s",
        "$name",
        "<script>alert(1)</script>",
        "}{",
    ],
)
def test_a_value_stays_as_typed(typed):
    assert render("Hi {name}!", {**VALUES, "name": typed}) == f"Hi {typed}!"


def test_a_value_naming_another_field_is_not_expanded_again():
    assert render("{name} / {other}", {"name": "{other}", "other": "{name}"}) == "{other} / {name}"


def test_html_templates_escape_values_but_not_the_template():
    rendered = render("<p>{name}</p>", {"name": '<script>"&'}, escape=html.escape)
    assert rendered == "<p>&lt;script&gt;&quot;&amp;</p>"


def test_other_braces_in_a_template_are_plain_text():
    assert render("{ not a field } {{name}} {}", VALUES) == "{ not a field } {Kim} {}"
    assert placeholders("{ not a field } {{name}} {} {name} {other}") == ["name", "other"]


def test_a_missing_value_is_empty():
    assert render("[{name}]", {}) == "[]"
