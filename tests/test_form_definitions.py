"""FORMS_FILE: the issue's example loads as written; each mistake is one line naming form and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailhub.errors import SettingsError
from mailhub.forms.definitions import FieldRule, load_forms_file
from mailhub.settings import load_settings

EXAMPLE = Path(__file__).parent / "fixtures" / "forms-example.toml"
SECRETS = {"turnstile": "t-secret"}
GOOD = """
[forms.contact]
to = ["owner@example.com"]
subject = "Contact: {name}"
text = "{message}"
reply_to = "email"

[forms.contact.fields]
name = { required = true }
email = { type = "email" }
message = { multiline = true }
"""


def test_the_issue_example_loads_as_written():
    form = load_forms_file(EXAMPLE, SECRETS)["contact"]
    assert form.to == ("owner@example.com",)
    assert form.subject == "Contact: {name}"
    assert form.text == "From {name} <{email}>:\n\n{message}\n"
    assert form.reply_to == "email"
    assert form.redirect == "https://www.example.com/thanks"
    assert form.captcha == "turnstile"
    assert form.token_field == "cf-turnstile-response"
    assert form.fields == (
        FieldRule("name", required=True, max_length=100),
        FieldRule("email", required=True, type="email", max_length=254),
        FieldRule("message", required=True, max_length=5000, multiline=True),
    )


def test_settings_load_forms_file_for_a_forms_only_deployment(tmp_path):
    path = tmp_path / "forms.toml"
    path.write_text(GOOD)
    env = {"SMTP_HOST": "smtp.example.com", "FORMS_FILE": str(path)}
    settings = load_settings(env, env_file=None)
    assert list(settings.forms) == ["contact"]
    assert settings.allowed_recipients == ()


def test_capture_mode_has_the_example_contact_form():
    settings = load_settings({"DEMO_RECIPIENT": "me@example.net"}, env_file=None)
    form = settings.forms["contact"]
    assert form.to == ("me@example.net",)
    assert form.reply_to == "email"
    assert not form.captcha and not form.redirect


def test_an_open_relay_still_stops_start_up(tmp_path):
    with pytest.raises(SettingsError, match="ALLOWED_RECIPIENTS is empty"):
        load_settings({"SMTP_HOST": "smtp.example.com"}, env_file=None)
    path = tmp_path / "forms.toml"
    path.write_text(GOOD)
    with pytest.raises(SettingsError, match="API_KEYS"):
        env = {"SMTP_HOST": "smtp.example.com", "FORMS_FILE": str(path), "ALLOWED_RECIPIENTS": "*"}
        load_settings(env, env_file=None)


def _mistake(tmp_path: Path, text: str, secrets: dict[str, str] | None = None) -> str:
    path = tmp_path / "forms.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_forms_file(path, SECRETS if secrets is None else secrets)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (
            ('subject = "Contact: {name}"', 'subject = "Contact: {nmae}"'),
            "forms.contact.subject: unknown placeholder {nmae}",
        ),
        (('text = "{message}"', 'text = "{message} {x}"'), "forms.contact.text: unknown placeholder {x}"),
        (
            ('subject = "Contact: {name}"', 'subject = "About {message}"'),
            "forms.contact.subject: {message} is multiline",
        ),
        (('to = ["owner@example.com"]', 'to = ["not an address"]'), "forms.contact.to: 'not an address'"),
        (('to = ["owner@example.com"]', ""), "forms.contact.to: is required"),
        (
            ('reply_to = "email"', 'reply_to = "name"'),
            "forms.contact.reply_to: 'name' is not a field of type email",
        ),
        (
            ('reply_to = "email"', 'reply_to = "email"\nredirct = "/x"'),
            "forms.contact: unknown key 'redirct'",
        ),
        (
            ('reply_to = "email"', 'reply_to = "email"\ncaptcha = "robots"'),
            "forms.contact.captcha: must be one of",
        ),
        (
            ('reply_to = "email"', 'reply_to = "email"\ncaptcha = "hcaptcha"'),
            "forms.contact.captcha: hcaptcha needs its secret: set HCAPTCHA_SECRET",
        ),
        (
            ('reply_to = "email"', 'reply_to = "email"\nredirect = "javascript:alert(1)"'),
            "forms.contact.redirect:",
        ),
        (('reply_to = "email"', 'reply_to = "email"\norigins = ["example.com"]'), "forms.contact.origins:"),
        (('reply_to = "email"', 'reply_to = "email"\nrate_limit = "lots"'), "forms.contact.rate_limit:"),
        (('reply_to = "email"', 'reply_to = "email"\nhoneypot = "name"'), "forms.contact.honeypot:"),
        (
            ("name = { required = true }", 'name = { required = "yes" }'),
            "forms.contact.fields.name.required: must be true or false",
        ),
        (
            ("name = { required = true }", 'name = { type = "number" }'),
            "forms.contact.fields.name.type: must be one of text, email",
        ),
        (
            ("name = { required = true }", "name = { max_length = 0 }"),
            "forms.contact.fields.name.max_length:",
        ),
        (
            ("name = { required = true }", "name = { size = 3 }"),
            "forms.contact.fields.name.size: unknown key",
        ),
        (('reply_to = "email"', 'reply_to = "email"\nsubject2 = 1'), "forms.contact: unknown key 'subject2'"),
        (
            (
                'reply_to = "email"',
                'reply_to = "email"\n[forms.contact.confirmation]\nsubject = "Thanks"\ntext = "Hi {name}"',
            ),
            "forms.contact.confirmation: needs a captcha",
        ),
        (
            ('reply_to = "email"', 'reply_to = "email"\nfrom_name = "{message} via Example"'),
            "forms.contact.from_name: {message} is multiline",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_form_and_key(tmp_path, change, where):
    old, new = change
    assert old in GOOD
    message = _mistake(tmp_path, GOOD.replace(old, new, 1))
    assert where in message
    assert str(tmp_path / "forms.toml") in message


def test_not_toml_names_the_file(tmp_path):
    assert "is not valid TOML" in _mistake(tmp_path, "[forms.contact\n")


def test_no_forms_at_all(tmp_path):
    assert "no forms" in _mistake(tmp_path, "forms = {}\n")
    assert "unknown top-level key 'title'" in _mistake(tmp_path, "title = 1\n")


def test_a_missing_file_stops_start_up(tmp_path):
    with pytest.raises(SettingsError, match=r"FORMS_FILE=.*cannot be read"):
        load_settings({"FORMS_FILE": str(tmp_path / "nope.toml")}, env_file=None)
