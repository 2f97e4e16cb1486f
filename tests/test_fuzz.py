"""Fuzzing: schemathesis against the running server's own spec, hypothesis on validators."""

from __future__ import annotations

import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError

from mailhub.web.schemas import EmailRequestSchema, header_safe
from tests.processes import MailhubProcess

SCHEMATHESIS = Path(sys.executable).with_name("st")


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_spec(tmp_path):
    st_command = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else shutil.which("st")
    assert st_command, "schemathesis is part of the test extra"
    admin_token = "fuzz-admin-token-0123456789abcdef"
    env = {"RATE_LIMIT": "off", "ADMIN_TOKEN": admin_token}
    with MailhubProcess(cwd=tmp_path, env=env) as server:
        run = subprocess.run(
            [
                st_command,
                "run",
                f"{server.url}/openapi.json",
                # The admin API too (schemathesis also tries it without the token: 401).
                "--header",
                f"Authorization: Bearer {admin_token}",
                "--checks",
                "all",
                # Our validation is stricter than JSON Schema can say (deliverable addresses,
                # 64 KiB of UTF-8), so some schema-valid bodies are rightly refused.
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "30",
                "--seed",
                "20261129",
                "--request-timeout",
                "5",
                "--max-time",
                "45",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


#: Refused in a header: controls (C0, DEL, C1), LINE and PARAGRAPH SEPARATOR.
REFUSED_CATEGORIES = ("Cc", "Zl", "Zp")
CONTROL = st.characters(whitelist_categories=REFUSED_CATEGORIES)


def refusable(text: str) -> bool:
    """What the header rules refuse, said independently of them (an encoded word needs `=?`)."""
    return "=?" in text or any(unicodedata.category(c) in (*REFUSED_CATEGORIES, "Cs") for c in text)


@given(st.text(), CONTROL, st.text())
def test_any_control_character_or_line_break_anywhere_is_refused(before, control, after):
    try:
        header_safe(before + control + after)
    except ValidationError:
        return
    raise AssertionError("a control character or line break got through")


@given(
    st.text(alphabet=st.characters(blacklist_categories=(*REFUSED_CATEGORIES, "Cs"))).filter(
        lambda t: "=?" not in t
    )
)
def test_text_without_control_characters_passes(text):
    header_safe(text)


@given(st.text(min_size=1, max_size=255).filter(str.strip), st.text(max_size=100))
def test_valid_subjects_are_kept_exactly_or_refused_for_a_header_rule(subject, username):
    data = {"to": "user@example.com", "subject": subject, "body": "b", "username": username}
    try:
        loaded = EmailRequestSchema().load(data)
    except ValidationError as exc:
        bad = exc.normalized_messages()
        assert set(bad) <= {"subject", "username"}
        assert refusable(subject + username)
        return
    assert loaded["subject"] == subject
    assert loaded["username"] == username
