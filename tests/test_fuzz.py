"""Fuzzing: schemathesis against the running server's own spec, hypothesis on validators."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError

from mailhub.web.schemas import EmailRequestSchema, no_control_characters
from tests.processes import MailhubProcess

SCHEMATHESIS = Path(sys.executable).with_name("st")


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_spec(tmp_path):
    st_command = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else shutil.which("st")
    assert st_command, "schemathesis is part of the test extra"
    with MailhubProcess(cwd=tmp_path, env={"RATE_LIMIT": "off"}) as server:
        run = subprocess.run(
            [
                st_command,
                "run",
                f"{server.url}/openapi.json",
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


CONTROL = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.just("\x7f")


@given(st.text(), CONTROL, st.text())
def test_any_control_character_anywhere_is_refused(before, control, after):
    try:
        no_control_characters(before + control + after)
    except ValidationError:
        return
    raise AssertionError("a control character got through")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"))))
def test_text_without_control_characters_passes(text):
    no_control_characters(text)


@given(st.text(min_size=1, max_size=255).filter(str.strip), st.text(max_size=100))
def test_valid_subjects_are_kept_exactly_or_refused_for_a_control_character(subject, username):
    data = {"to": "user@example.com", "subject": subject, "body": "b", "username": username}
    try:
        loaded = EmailRequestSchema().load(data)
    except ValidationError as exc:
        bad = exc.normalized_messages()
        assert set(bad) <= {"subject", "username"}
        assert any(ord(c) < 0x20 or c == "\x7f" or 0xD800 <= ord(c) <= 0xDFFF for c in subject + username)
        return
    assert loaded["subject"] == subject
    assert loaded["username"] == username
