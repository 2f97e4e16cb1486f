"""Fuzzing: schemathesis against the running server's own spec, hypothesis on validators."""

from __future__ import annotations

import re
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
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"
#: A WebSocket switches protocols after its handshake, and schemathesis speaks
#: HTTP only: test_streams drives it.
NOT_HTTP = ["--exclude-path", "/api/v1/email/ws"]


def schemathesis(tmp_path: Path, *options: str) -> str:
    """Run `st run` with `options` against a capture-mode `python run.py`; its output, if it passed."""
    st_command = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else shutil.which("st")
    assert st_command, "schemathesis is part of the test extra"
    env = {"RATE_LIMIT": "off", "ADMIN_TOKEN": ADMIN_TOKEN}
    with MailhubProcess(cwd=tmp_path, env=env) as server:
        run = subprocess.run(
            [st_command, "run", f"{server.url}/openapi.json", "--request-timeout", "5", *options],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    return run.stdout


def test_schemathesis_finds_no_5xx_and_no_answer_off_the_spec(tmp_path):
    schemathesis(
        tmp_path,
        # The admin API too (schemathesis also tries it without the token: 401).
        "--header",
        f"Authorization: Bearer {ADMIN_TOKEN}",
        "--checks",
        "all",
        # The admin API's schema does not say all its validator refuses yet (a
        # list's cursor, an address); the submit doors are held to it below.
        "--exclude-checks",
        "positive_data_acceptance",
        *NOT_HTTP,
        "--max-examples",
        "30",
        "--seed",
        "20261129",
        "--max-time",
        "45",
    )


def test_schemathesis_follows_each_queued_task_and_every_valid_post_is_taken(tmp_path):
    """All checks, positive data acceptance included, on both submit doors and what follows a task.

    The stateful phase posts a mail (contract or form), then follows the
    `task_id` of its answer through the spec's links to the result and to
    the live events, which stream the task to its end.
    """
    output = schemathesis(
        tmp_path,
        "--include-path-regex",
        "^/api/v1/(email|forms)/",
        *NOT_HTTP,
        "--checks",
        "all",
        "--max-examples",
        "10",
        "--seed",
        "20261204",
    )
    links = re.search(r"API Links:\s+(\d+) covered", output)
    assert links and int(links.group(1)) >= 4, output[-3000:]
    assert re.search(r"Stateful \(in [\d.]+m?s\)", output), output[-3000:]


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
