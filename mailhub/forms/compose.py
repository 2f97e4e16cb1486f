"""Turn a form and a visitor's checked values into the mails to queue."""

from __future__ import annotations

import html

from mailhub.forms.definitions import FormDefinition
from mailhub.forms.fields import FieldsInvalid, Problem
from mailhub.forms.templates import placeholders, render
from mailhub.header_safety import header_value_problem
from mailhub.store.tasks import EmailRequest


def compose(form: FormDefinition, values: dict[str, str]) -> EmailRequest:
    """The owner's mail: the form's recipients, its templates filled in literally."""
    return EmailRequest(
        to=", ".join(form.to),
        subject=_header(form.subject, values) or f"Form {form.form_id}",
        body=render(form.text, values),
        html=render(form.html, values, escape=html.escape) if form.html else "",
        reply_to=values.get(form.reply_to, "") if form.reply_to else "",
        from_name=_header(form.from_name, values),
        rendered=True,
        shown_to=", ".join(masked(address) for address in form.to),
    )


def compose_confirmation(form: FormDefinition, values: dict[str, str]) -> EmailRequest | None:
    """The visitor's confirmation, to the `reply_to` address; None if the form has none."""
    if form.confirmation is None or not values.get(form.reply_to):
        return None
    return EmailRequest(
        to=values[form.reply_to],
        subject=_header(form.confirmation.subject, values) or f"Form {form.form_id}",
        body=render(form.confirmation.text, values),
        rendered=True,
    )


def masked(address: str) -> str:
    """An owner's address as a visitor may see it in the result: `…@example.com`."""
    return "…@" + address.rpartition("@")[2]


def _header(template: str, values: dict[str, str]) -> str:
    """A header template filled in, checked again as a whole before it becomes a header."""
    value = render(template, values).strip()
    problem = header_value_problem(value)
    if problem:
        raise FieldsInvalid({name: Problem("header", problem) for name in placeholders(template)})
    return value
