"""Message building: the bytes mailhub writes read back, with the `email` package, as
the parts and as the email package's own message of them would; the header-block
check lets through only the headers mailhub wrote."""

from __future__ import annotations

import base64
import re
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtplib.email import flatten_message
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhub.delivery import mime_body as mime_body_module
from mailhub.delivery.address_headers import address_header, sender_header
from mailhub.delivery.header_check import Field, check_header_block
from mailhub.delivery.message import MessageParts, OutgoingMail, prepare, render_body
from mailhub.delivery.mime_body import mime_body
from mailhub.errors import PermanentFailure, UnsendableMessage
from mailhub.header_safety import header_value_problem

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


def read(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def reference(values: MessageParts) -> EmailMessage:
    """The email package's own message of `values`, flattened and read back."""
    message = EmailMessage(policy=policy.default)
    message["From"] = values.mail_from
    message["To"] = values.to
    message["Subject"] = values.subject
    message["Message-ID"] = values.message_id
    message.set_content(values.text, charset="utf-8")
    return read(flatten_message(message, utf8=not values.to.isascii()))


def forms_of(mail: OutgoingMail) -> list[bytes]:
    return [mail.data, mail.seven_bit_data()]


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("mail_from", ["Site <noreply@example.com>", "홈페이지 <noreply@example.com>"])
@pytest.mark.parametrize("to", ["user@example.com", "사용자@example.com"])
def test_the_mail_reads_as_the_standard_policys(subject, mail_from, to):
    values = parts(subject, mail_from, to)
    expected = reference(values)
    mail = prepare(values)
    assert mail.utf8 == (not to.isascii())
    for data in forms_of(mail):
        message = read(data)
        for name in ("From", "To", "Message-ID"):
            assert str(message[name]) == str(expected[name]), name
        assert message["Subject"] == subject  # the package's own drops leading spaces
        assert message["From"].addresses == expected["From"].addresses
        assert message["To"].addresses == expected["To"].addresses
        assert message.get_content_type() == "text/plain"
        assert message.get_content_charset() == "utf-8"
        assert message.get_content() == expected.get_content().replace("\n", "\r\n")
        assert message.defects == []
        for name in ("From", "To", "Subject", "Message-ID"):  # an SMTPUTF8 To has the same defects
            assert [type(d) for d in message[name].defects] == [type(d) for d in expected[name].defects]


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
        prepare(parts(values["subject"], to=values["to"]))
    assert isinstance(refused.value, PermanentFailure)


def test_prepare_gives_the_envelope_and_checked_bytes():
    values = parts("안녕하세요 " * 20)
    mail = prepare(values)
    assert (mail.sender, mail.recipients, mail.utf8) == ("noreply@example.com", ("user@example.com",), False)
    assert mail.data.startswith(b"From: Site <noreply@example.com>\r\n")
    assert mail.seven_bit_data().isascii()
    assert not mail.data.isascii()  # the 8-bit form sends the Korean body as it is
    for data in forms_of(mail):
        message = read(data)
        assert message["Subject"] == values.subject
        assert message.get_content() == values.text.replace("\n", "\r\n") + "\r\n"


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
    mail = prepare(form_parts())
    assert mail.recipients == ("owner@example.com", "sales@example.com")
    assert mail.sender == "noreply@example.com"
    head = mail.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nReply-To: visitor@example.org\r\n" in head
    assert b"multipart/alternative" in head
    for data in forms_of(mail):
        message = read(data)
        assert message["From"].addresses[0].display_name == "홍길동 via Site"
        assert message["From"].addresses[0].addr_spec == "noreply@example.com"
        assert [a.addr_spec for a in message["To"].addresses] == ["owner@example.com", "sales@example.com"]
        assert message["Reply-To"] == "visitor@example.org"
        assert message.get_content_type() == "multipart/alternative"
        assert message.get_body(("plain",)).get_content() == "Hello\r\n"
        assert message.get_body(("html",)).get_content() == "<p>Hello</p>\r\n"
        assert message.defects == []


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
        prepare(form_parts(**change))


#: What the interpreter makes of encoded words (CVE-2024-6923 before 3.11.10 /
#: 3.12.5): on this machine the flattened headers hold a line mailhub never wrote.
CVE_VALUES = [
    ("Reply-To", "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org"),
    ("Subject", "=?utf-8?q?hi=0D=0ABcc:_victim@evil.com?="),
    ("Subject", "=?utf-8?b?" + base64.b64encode(b"hi\r\nFrom: boss@example.com").decode() + "?="),
    ("Subject", "=?utf-8?b?" + base64.b64encode(b"x\r\nContent-Type: text/html\r\n\r\n<b>").decode() + "?="),
    ("To", "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org"),
]


def cve_parts(name: str, value: str) -> MessageParts:
    values = {"Subject": "Hello", "To": "user@example.com", "Reply-To": "visitor@example.org", name: value}
    return MessageParts(
        mail_from="Site <noreply@example.com>",
        to=values["To"],
        subject=values["Subject"],
        message_id="<task@example.com>",
        text="body",
        reply_to=values["Reply-To"],
    )


class PastTheValueCheck(MessageParts):
    """Parts whose values skip the header rules, to reach what comes after them."""

    def problem(self) -> str | None:
        return None


def written_by_mailhub(values: MessageParts) -> tuple[OutgoingMail, list[Field]]:
    mail = prepare(PastTheValueCheck(**vars(values)))
    return mail, [*mail.headers, *mime_body(values.text, values.html, eight_bit=True)[0]]


@pytest.mark.parametrize(("name", "value"), CVE_VALUES)
@pytest.mark.parametrize("eight_bit", [True, False])
def test_the_header_check_catches_what_the_interpreter_folds_wrongly(name, value, eight_bit):
    values = cve_parts(name, value)
    message = EmailMessage(policy=policy.default)  # the email package's fold, past the value check
    message["From"] = values.mail_from
    message["To"] = values.to
    message["Reply-To"] = values.reply_to
    message["Subject"] = values.subject
    message["Message-ID"] = values.message_id
    message.set_content("body")
    data = flatten_message(message, cte_type="8bit" if eight_bit else "7bit")
    if name == "Subject":  # mailhub writes Subject itself: the check refuses the package's bytes
        _, fields = written_by_mailhub(values)
        with pytest.raises(UnsendableMessage, match="header check failed"):
            check_header_block(data, fields, utf8=False)
    else:  # mailhub lets the package fold addresses: the fold is checked as it is made
        for utf8 in (False, True):
            with pytest.raises(UnsendableMessage, match="header check failed"):
                address_header(name, value).field(utf8=utf8)


@pytest.mark.parametrize(("name", "value"), [v for v in CVE_VALUES if v[0] == "Subject"])
def test_a_subject_mailhub_encodes_itself_reads_back_as_the_literal_text(name, value):
    mail, _ = written_by_mailhub(cve_parts(name, value))
    for data in forms_of(mail):
        message = read(data)
        assert message["Subject"] == value
        assert [n for n, _ in message.items()].count("Subject") == 1
        assert message["Bcc"] is None and len(message.get_all("From")) == 1
        assert message.get_content_type() == "text/plain"


@pytest.mark.parametrize(
    "display_name",
    [
        "=?utf-8?q?Kim=0D=0ABcc:_v@evil.com?=",
        "=?utf-8?b?" + base64.b64encode(b"K\r\nBcc: v@e.com").decode() + "?=",
    ],
)
def test_a_display_name_mailhub_encodes_itself_reads_back_as_the_literal_text(display_name):
    field = sender_header("noreply@example.com", display_name).field(utf8=False)
    message = read(field.lines.encode() + b"\r\n\r\n")
    assert message["From"].addresses[0].display_name == display_name
    assert message["From"].addresses[0].addr_spec == "noreply@example.com"


GOOD = prepare(parts("Hello"))
GOOD_DATA = GOOD.data
GOOD_FIELDS = [*GOOD.headers, *mime_body(GOOD.parts.text, "", eight_bit=True)[0]]


def tampered(old: bytes, new: bytes) -> bytes:
    assert old in GOOD_DATA
    return GOOD_DATA.replace(old, new, 1)


def test_the_header_check_passes_the_headers_mailhub_wrote():
    check_header_block(GOOD_DATA, GOOD_FIELDS, utf8=False)


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
        check_header_block(data, GOOD_FIELDS, utf8=False)


@pytest.mark.parametrize(
    ("field", "lines"),
    [
        (Field("Subject", "Subject: =?utf-8?b?SGVsbG8=?=", text="Hello!"), "decodes to other text"),
        (Field("Subject", "Subject: =?utf-8?b?SGVsbG8?=", text="Hello"), "broken base64"),
        (Field("Subject", "Subject: =?utf-8?b?/w==?=", text="\ufffd"), "not UTF-8"),
        (Field("From", "From: =?utf-8?b?S2lt?= noreply@example.com", text="Kim"), "no <address>"),
        (Field("From", 'From: "Kim" <noreply@example.com>', text="Lee"), "another display name"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_the_header_check_decodes_the_text_mailhub_encoded_itself(field, lines):
    data = field.lines.encode() + b"\r\n\r\nbody\r\n"
    with pytest.raises(UnsendableMessage, match="header check failed"):
        check_header_block(data, [field], utf8=False)


def test_a_header_that_is_not_ascii_needs_smtputf8():
    field = Field("To", "To: 사용자@example.com")
    data = field.lines.encode() + b"\r\n\r\nbody\r\n"
    check_header_block(data, [field], utf8=True)
    with pytest.raises(UnsendableMessage, match="header check failed: 8-bit text"):
        check_header_block(data, [field], utf8=False)


def header_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


@pytest.mark.parametrize(
    "subject",
    [
        "Contact: " + "word " * 40 + "end",
        "x" * 300,
        "가" * 255,
        "📨" * 100,
        "mixed 한국어 and English " * 8,
        "a=?b and =?utf-8?q?no end",
        " leading",
        "trailing ",
        "double  space",
        '"quoted" (comment) <angle> \\ ; : , @',
    ],
)
def test_a_subject_of_any_shape_reads_back_exactly_in_lines_within_the_limits(subject):
    mail = prepare(PastTheValueCheck(**vars(parts(subject))))
    for line in header_lines(mail.data):
        assert len(line) <= 78, line
        if b"=?" in line:
            assert len(line) <= 76, line  # RFC 2047
    for data in forms_of(mail):
        assert read(data)["Subject"] == subject


def test_a_plain_subject_goes_as_it_is_and_anything_else_encoded():
    assert b"\r\nSubject: Contact: Kim\r\n" in prepare(parts("Contact: Kim")).data
    folded = prepare(parts("word " * 30 + "end")).data
    assert b"\r\nSubject: word word" in folded and b"=?" not in folded
    for subject in ("안녕", " Hello", "Hello  World", "a=?b", "x" * 80):
        assert b"\r\nSubject: =?utf-8?b?" in prepare(parts(subject)).data, subject


@pytest.mark.parametrize(
    "display_name",
    [
        "Kim",
        "Kim Lee via Site",
        "Kim, Jr.",
        'Kim "K" Lee',
        "back\\slash",
        "홍길동",
        "a  b",
        " Kim ",
        "x" * 100,
    ],
)
def test_a_from_display_name_reads_back(display_name):
    mail = prepare(form_parts(from_name=display_name))
    for line in header_lines(mail.data):
        assert len(line) <= 78, line
    sender = read(mail.data)["From"].addresses[0]
    assert sender.addr_spec == "noreply@example.com"
    # The email package keeps the space between two encoded words of a display
    # name (RFC 2047 drops it) and folds runs of white space: compare the text.
    assert "".join(sender.display_name.split()) == "".join(display_name.split())


@pytest.mark.parametrize(
    "address",
    ["user@example.com", "o'brien+tag@example.com", "first.last@sub.example.co.uk", "a-b_c@x-y.example"],
)
@pytest.mark.parametrize("name", ["To", "Reply-To"])
def test_a_plain_address_is_written_as_the_email_package_writes_it(name, address):
    value = address_header(name, address)
    assert value.plain
    folded = policy.SMTP.header_factory(name, address).fold(policy=policy.SMTP)
    assert value.field(utf8=False).lines + "\r\n" == folded
    assert value.addresses == (address,)


@pytest.mark.parametrize(
    "address", ["Kim <user@example.com>", '"a b"@example.com', "user@bücher.de", "a@x.org, b@y.org"]
)
def test_another_address_is_folded_by_the_email_package(address):
    value = address_header("To", address)
    assert not value.plain
    utf8 = not address.isascii()
    writing = policy.SMTPUTF8 if utf8 else policy.SMTP
    assert value.field(utf8=utf8).lines + "\r\n" == writing.header_factory("To", address).fold(policy=writing)


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Hello\nWorld", "7bit"),
        ("", "7bit"),
        ("안녕하세요\n" + "줄 " * 200, "8bit"),
        ("x" * 998, "7bit"),
        ("x" * 999, "quoted-printable"),
        ("a\x00b", "quoted-printable"),
        ("가" * 332 + "a" * 2, "8bit"),
        ("가" * 333, "base64"),
    ],
)
def test_a_bodys_transfer_encoding_keeps_every_line_within_998_octets(text, encoding):
    mail = prepare(MessageParts("noreply@example.com", "user@example.com", "s", "<a@b.c>", text))
    message = read(mail.data)
    assert message["Content-Transfer-Encoding"] == encoding
    for data in forms_of(mail):
        assert all(len(line) <= 998 for line in data.split(b"\r\n"))
        assert read(data).get_content() == text.replace("\n", "\r\n") + "\r\n"
    assert read(mail.seven_bit_data())["Content-Transfer-Encoding"] in ("7bit", "quoted-printable", "base64")


@pytest.mark.parametrize("text", ["a\r\nb\rc\nd", "a\n\n\nb\n", "\r\n\r\n", "line\r", "trailing space \nx"])
def test_every_line_end_becomes_crlf(text):
    mail = prepare(MessageParts("noreply@example.com", "user@example.com", "s", "<a@b.c>", text, html=text))
    expected = _with_crlf(text)
    assert b"\r" not in mail.data.replace(b"\r\n", b"") and b"\n" not in mail.data.replace(b"\r\n", b"")
    for data in forms_of(mail):
        message = read(data)
        assert message.get_body(("plain",)).get_content() == expected
        assert message.get_body(("html",)).get_content() == expected


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "\ud800"},
        {"from_name": "Kim \udc80"},
        {"to": "\ud800@example.com"},
        {"reply_to": "a\udfff@example.org"},
        {"text": "body \ud800"},
        {"html": "<p>\udc80</p>"},
    ],
)
def test_a_lone_surrogate_is_unsendable(change):
    with pytest.raises(UnsendableMessage, match=r"cannot be built: .*not valid Unicode"):
        prepare(form_parts(**change))


@pytest.mark.parametrize("message_id", ["", "task@example.com", "<a b@c>", "<a@b>\r\nBcc: v@e.com", "<한@b>"])
def test_a_message_id_that_is_not_one_ascii_line_is_unsendable(message_id):
    with pytest.raises(UnsendableMessage, match="Message-ID"):
        prepare(form_parts(message_id=message_id))


def test_an_older_tasks_message_id_is_taken_as_it_is():
    old = "<173318400012.4242.9876543210123456789@host.example.com>"
    assert read(prepare(form_parts(message_id=old)).data)["Message-ID"] == old


def test_the_multipart_boundary_is_in_no_part(monkeypatch):
    text = "this text holds --=_" + "0" * 24 + " on purpose"
    tokens = iter(["0" * 24, "1" * 24])
    monkeypatch.setattr(mime_body_module.secrets, "token_hex", lambda _: next(tokens))
    mail = prepare(form_parts(text=text))
    assert b'boundary="=_' + b"1" * 24 + b'"' in mail.data
    assert read(mail.data).get_body(("plain",)).get_content() == text + "\r\n"


def test_the_date_is_now_in_utc():
    date = read(prepare(form_parts()).data)["Date"]
    assert date.datetime.utcoffset().total_seconds() == 0
    assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000", str(date))


#: Header text a visitor may send: anything but what `header_safety` refuses.
header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=255).filter(
    lambda text: header_value_problem(text) is None
)
#: Body text: any character (a lone surrogate aside), line ends of every kind included.
body_text = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from("\r\n \t"), max_size=3000)


@settings(max_examples=300, deadline=None)
@given(subject=header_text, from_name=header_text, text=body_text, html=body_text)
def test_any_mail_reads_back_as_its_parts(subject, from_name, text, html):
    values = form_parts(subject=subject, from_name=from_name, text=text, html=html)
    mail = prepare(values)
    for data in forms_of(mail):
        for line in data.split(b"\r\n"):
            assert len(line) <= 998
        message = read(data)
        assert message["Subject"] == subject
        sender = message["From"].addresses[0]
        assert (sender.addr_spec, "".join(sender.display_name.split())) == (
            "noreply@example.com",
            "".join((from_name or "Site").split()),  # none: `mail_from` as it is
        )
        assert message["Reply-To"] == "visitor@example.org"
        assert message.defects == []
        bodies = [message.get_body((subtype,)) for subtype in ("plain", "html")]
        if not html:
            assert message.get_content_type() == "text/plain"
        else:
            assert bodies[1].get_content() == _with_crlf(html)
        assert bodies[0].get_content() == _with_crlf(text)


def _with_crlf(text: str) -> str:
    """`text` as a reader gets it back: every CR, LF and CRLF a CRLF, and a final one."""
    lines = re.sub("\r\n|\r|\n", "\r\n", text)
    return lines if lines.endswith("\r\n") else lines + "\r\n"
