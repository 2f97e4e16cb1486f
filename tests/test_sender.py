"""The message builder: its faster header policy changes nothing on the wire."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

import pytest
from aiosmtplib.email import flatten_message

from mailhub.delivery.sender import build_message
from mailhub.store.tasks import Attempt

SUBJECTS = [
    "Hello",
    "  lower case  ",
    "안녕하세요,  홍길동 님 — 문의 접수 (re: Hello WORLD)  ",
    "x" * 300,
    "=?utf-8?q?not-an-encoded-word?=",
    "emoji 📨 " * 20,
]


def attempt(subject: str) -> Attempt:
    return Attempt(
        "1-0",
        "task",
        "user@example.com",
        subject,
        "{username}님 안녕하세요!\n\n" + "줄 " * 80,
        "홍길동",
        "<task@example.com>",
        1,
    )


def with_default_policy(message: EmailMessage) -> EmailMessage:
    reference = EmailMessage(policy=policy.default)
    for name, value in message.items():
        if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version"):
            reference[name] = str(value)
    reference.set_content(message.get_content(), charset="utf-8")
    return reference


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("mail_from", ["Site <noreply@example.com>", "홈페이지 <noreply@example.com>"])
@pytest.mark.parametrize(("utf8", "cte"), [(False, "8bit"), (False, "7bit"), (True, "8bit")])
def test_the_wire_format_is_the_standard_policys(subject, mail_from, utf8, cte):
    message = build_message(attempt(subject), mail_from)
    reference = with_default_policy(message)
    assert flatten_message(message, utf8=utf8, cte_type=cte) == flatten_message(
        reference, utf8=utf8, cte_type=cte
    )
