"""`python run.py check` against real servers: good settings, a wrong password, a wrong TLS mode."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from dataclasses import replace

import aiosmtplib
import pytest

from mailhub.check import Outcome, Step, hint_for, report, run_checks
from mailhub.settings import Settings
from mailhub.store.embedded_valkey import EmbeddedRedis
from tests.helpers import free_port, settings_for, smtp_env
from tests.processes import ROOT, clean_env
from tests.smtp_server import SmtpServer


def outcomes(steps: list[Step]) -> dict[str, Outcome]:
    return {step.name: step.outcome for step in steps}


def failure(steps: list[Step]) -> Step:
    [failed] = [step for step in steps if step.outcome is Outcome.FAIL]
    return failed


@pytest.fixture
def persistent_valkey(tmp_path):
    """A Valkey that keeps an append-only file, as a production Redis should."""
    with EmbeddedRedis(tmp_path / "valkey", persist=True) as server:
        yield server


async def test_good_settings_pass_every_step(settings, smtp, persistent_valkey):
    steps = await run_checks(replace(settings, redis_url=persistent_valkey.url))
    assert set(outcomes(steps).values()) == {Outcome.OK}
    assert list(outcomes(steps)) == [
        "Redis",
        "eviction",
        "persistence",
        "SMTP connect",
        "TLS",
        "login",
        "sender",
    ]
    out = io.StringIO()
    assert report(steps, out) == 0
    assert "STARTTLS" in out.getvalue() and "logged in as mailhub" in out.getvalue()
    assert "(Valkey 9." in out.getvalue() and "append-only file on" in out.getvalue()
    assert smtp.handler.messages == []  # nothing was sent


async def test_wrong_password_fails_the_login_step(settings, smtp):
    steps = await run_checks(replace(settings, smtp_pass="wrong"))
    failed = failure(steps)
    assert (failed.name, failed.detail) == ("login", "535 5.7.8 Authentication credentials invalid")
    assert "SMTP_PASS" in failed.hint
    assert report(steps, io.StringIO()) == 1


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("smtp.gmail.com", "app password"),
        ("smtp.office365.com", "SMTP AUTH enabled"),
        ("mail.example.net", "SMTP_USER and SMTP_PASS"),
    ],
)
def test_a_refused_login_gets_the_provider_hint(host, words):
    settings = Settings(smtp_host=host, smtp_user="me@example.com", smtp_pass="pw")
    refused = aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Username and Password not accepted")
    assert words in hint_for(refused, "login", settings)


async def test_implicit_tls_against_a_starttls_server_says_use_starttls(settings, smtp):
    failed = failure(await run_checks(replace(settings, smtp_tls="ssl")))
    assert failed.name == "SMTP connect"
    assert "WRONG_VERSION_NUMBER" in failed.detail
    assert "SMTP_TLS=starttls" in failed.hint


async def test_starttls_against_an_implicit_tls_server_says_use_ssl(valkey, tls_material, trust_test_ca):
    with SmtpServer(tls_material, tls="ssl", user="u", password="p") as server:
        settings = settings_for(server, redis_url=valkey.url, smtp_tls="starttls", smtp_timeout=1.0)
        failed = failure(await run_checks(settings))
        # One loop turn closes the client socket; until then the server's stop()
        # would wait for the TLS handshake it is still expecting.
        await asyncio.sleep(0)
    assert failed.name == "SMTP connect"
    assert "SMTP_TLS=ssl" in failed.hint


async def test_an_untrusted_certificate_points_at_ssl_cert_file(settings, smtp, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    failed = failure(await run_checks(settings))
    assert (failed.name, "CERTIFICATE_VERIFY_FAILED" in failed.detail) == ("TLS", True)
    assert "SSL_CERT_FILE" in failed.hint


async def test_unreachable_redis_and_missing_smtp_host_fail(settings):
    steps = await run_checks(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", smtp_host=""))
    assert outcomes(steps) == {"Redis": Outcome.FAIL, "SMTP": Outcome.FAIL}
    assert "SMTP_HOST" in steps[1].hint


@pytest.mark.parametrize(("password", "code"), [("secret", 0), ("wrong", 1)])
def test_run_py_check_exit_code(tmp_path, valkey, smtp, password, code):
    env = clean_env(**smtp_env(smtp, REDIS_URL=valkey.url, SMTP_PASS=password))
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stdout + done.stderr
    assert ("All checks passed." if code == 0 else "FAIL  login") in done.stdout


async def test_the_forms_are_listed_and_a_form_without_defences_warned(settings, smtp):
    from mailhub.forms.definitions import capture_contact_form

    contact = capture_contact_form("owner@example.com")
    steps = await run_checks(replace(settings, forms={"contact": contact}))
    [forms] = [step for step in steps if step.name == "forms"]
    assert forms.outcome is Outcome.WARN
    assert "contact -> owner@example.com" in forms.detail
    assert "no captcha" in forms.hint


def test_run_py_check_names_the_form_and_key_of_a_bad_forms_file(tmp_path):
    forms = tmp_path / "forms.toml"
    forms.write_text(
        '[forms.contact]\nto = ["owner@example.com"]\nsubject = "{nmae}"\ntext = "x"\n'
        "[forms.contact.fields]\nname = {}\n"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "check"],
        cwd=tmp_path,
        env=clean_env(FORMS_FILE=str(forms)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "forms.contact.subject: unknown placeholder {nmae}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
