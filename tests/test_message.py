"""Message building: the faster header policy changes nothing on the wire; the
header-block check lets through only the headers mailhub wrote."""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage

import pytest
from aiosmtplib.email import flatten_message

from mailhub.delivery.message import (
    MessageParts,
    build_message,
    check_header_block,
    flatten_checked,
    prepare,
    render_body,
)
from mailhub.errors import PermanentFailure, UnsendableMessage

SUBJECTS = [
    "Hello",
    "  lower case  ",
    "안녕하세요,  홍길동 님 — 문의 접수 (re: Hello WORLD)  ",
    "x" * 300,
    "= ? not an encoded word ? =",
    "emoji 📨 " * 20,
]


def parts(
    subject: str, mail_from: str = "Site <noreply@example.com>", to: str = "user@example.com"
) -> MessageParts:
    return MessageParts(
        mail_from=mail_from,
        to=to,
        subject=subject,
        message_id="<task@example.com>",
        text=render_body("{username}님 안녕하세요!\n\n" + "줄 " * 80, "홍길동"),
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
    message = build_message(parts(subject, mail_from))
    reference = with_default_policy(message)
    assert flatten_message(message, utf8=utf8, cte_type=cte) == flatten_message(
        reference, utf8=utf8, cte_type=cte
    )


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "=?utf-8?q?hi=0D=0ABcc:_victim@evil.com?="},
        {"subject": "hi\u2028Bcc: victim@evil.com"},
        {"subject": "hi\x85Bcc: victim@evil.com"},
        {"to": "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org"},
        {"to": "victim%evil.com@example.org"},
    ],
)
def test_a_value_that_may_not_reach_a_header_is_unsendable(change):
    values = {"subject": "Hello", "to": "user@example.com", **change}
    with pytest.raises(UnsendableMessage, match="cannot be built") as refused:
        build_message(parts(values["subject"], to=values["to"]))
    assert isinstance(refused.value, PermanentFailure)


def test_prepare_gives_the_envelope_and_checked_bytes():
    mail = prepare(build_message(parts("안녕하세요 " * 20)))
    assert (mail.sender, mail.recipients, mail.utf8) == ("noreply@example.com", ("user@example.com",), False)
    assert mail.data.startswith(b"From: Site <noreply@example.com>\r\n")
    assert mail.seven_bit_data().isascii()
    assert flatten_message(mail.message) == mail.data


def form_parts(**changes: str) -> MessageParts:
    """A form's mail: several recipients, Reply-To, a From name, an HTML alternative."""
    values = dict(
        mail_from="Site <noreply@example.com>",
        to="owner@example.com, sales@example.com",
        subject="Contact form",
        message_id="<form@example.com>",
        text="Hello",
        html="<p>Hello</p>",
        reply_to="visitor@example.org",
        from_name="홍길동 via Site",
    )
    return MessageParts(**{**values, **changes})


def test_a_forms_mail_passes_the_header_check_with_every_header_it_has():
    mail = prepare(build_message(form_parts()))
    assert mail.recipients == ("owner@example.com", "sales@example.com")
    assert mail.sender == "noreply@example.com"
    head = mail.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nReply-To: visitor@example.org\r\n" in head
    assert b"multipart/alternative" in head


@pytest.mark.parametrize(
    "change",
    [
        {"reply_to": "victim%evil.com@example.org"},
        {"reply_to": "=?utf-8?q?x=0D=0ABcc:_v@evil.com?= <visitor@example.org>"},
        {"from_name": "=?utf-8?q?Kim=0D=0ABcc:_v@evil.com?="},
        {"from_name": "Kim\u2029Bcc: v@evil.com"},
        {"to": "owner@example.com, evil.com!victim@example.org"},
    ],
)
def test_a_forms_header_values_are_checked_at_build(change):
    with pytest.raises(UnsendableMessage, match="cannot be built"):
        build_message(form_parts(**change))


#: What the interpreter makes of encoded words (CVE-2024-6923 before 3.11.10 /
#: 3.12.5): on this machine the flattened headers hold a line mailhub never wrote.
CVE_VALUES = [
    ("Reply-To", "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org"),
    ("Subject", "=?utf-8?q?hi=0D=0ABcc:_victim@evil.com?="),
    ("Subject", "=?utf-8?b?" + base64.b64encode(b"hi\r\nFrom: boss@example.com").decode() + "?="),
    ("Subject", "=?utf-8?b?" + base64.b64encode(b"x\r\nContent-Type: text/html\r\n\r\n<b>").decode() + "?="),
    ("To", "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org"),
]


@pytest.mark.parametrize(("name", "value"), CVE_VALUES)
@pytest.mark.parametrize("eight_bit", [True, False])
def test_the_header_check_catches_what_the_interpreter_folds_wrongly(name, value, eight_bit):
    message = EmailMessage(policy=policy.default)  # past build_message's own value check
    message["From"] = "Site <noreply@example.com>"
    message["To"] = "user@example.com"
    message["Subject"] = "Hello"
    message["Reply-To"] = "visitor@example.org"
    message.replace_header(name, value)
    message.set_content("body")
    with pytest.raises(UnsendableMessage, match=r"header check failed|cannot be flattened"):
        flatten_checked(message, utf8=False, eight_bit=eight_bit)


GOOD = build_message(parts("Hello"))
GOOD_DATA = flatten_message(GOOD)


def tampered(old: bytes, new: bytes) -> bytes:
    assert old in GOOD_DATA
    return GOOD_DATA.replace(old, new, 1)


def test_the_header_check_passes_the_headers_mailhub_wrote():
    check_header_block(GOOD_DATA, GOOD)


@pytest.mark.parametrize(
    "data",
    [
        tampered(b"Subject: Hello\r\n", b"Subject: Hello\r\nBcc: victim@evil.com\r\n"),
        tampered(b"Subject: Hello\r\n", b"Subject: Hello\r\nSubject: Hello again\r\n"),
        tampered(b"Subject: Hello\r\n", b"Subject: Hello\r\nFrom: boss@example.com\r\n"),
        tampered(b"Subject: Hello\r\n", b""),
        tampered(b"Subject: Hello", b"Subject: Hello\nBcc: victim@evil.com"),
        tampered(b"Subject: Hello", b"Subject: Hello\rBcc: victim@evil.com"),
        tampered(b"Subject: Hello", b"Subject: Hello\xc2\x85Bcc: victim@evil.com"),
        tampered(b"Subject: Hello", b"Subject: =?utf-8?q?Hello=0D=0ABcc=3A_victim=40evil=2Ecom?="),
        tampered(
            b"Subject: Hello", b"Subject: =?utf-8?b?" + base64.b64encode(b"Hi\xe2\x80\xa8Bcc: v") + b"?="
        ),
        tampered(b"To: user@example.com", b"To: a, victim@evil.com, b@example.org"),
        tampered(b"To: user@example.com", b"To: victim@evil.com"),
        tampered(b"Subject: Hello\r\n", b"Subject: Hello\r\nnot a header line\r\n"),
        tampered(b"Subject: Hello\r\n", b"Subject: Hello\r\n\r\n<html>replaced body</html>\r\n"),
        GOOD_DATA.split(b"\r\n\r\n")[0],
    ],
    ids=[
        "extra-bcc",
        "second-subject",
        "second-from",
        "missing-subject",
        "bare-lf",
        "bare-cr",
        "nel",
        "encoded-crlf",
        "encoded-u2028",
        "to-with-more-addresses",
        "to-with-another-address",
        "not-a-header",
        "body-moved-up",
        "no-end-of-headers",
    ],
)
def test_the_header_check_refuses_a_tampered_header_block(data):
    with pytest.raises(UnsendableMessage, match="header check failed"):
        check_header_block(data, GOOD)
