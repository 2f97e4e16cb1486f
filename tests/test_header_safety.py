"""The header rules every door and message building share."""

from __future__ import annotations

import base64
import sys
import time
import unicodedata

import pytest

from mailhub.header_safety import address_problem, has_encoded_word, header_value_problem

#: Every character `str.splitlines()` breaks on, found by asking it.
LINE_BREAKS = [chr(c) for c in range(sys.maxunicode + 1) if len(f"a{chr(c)}b".splitlines()) > 1]
#: Every control character Unicode knows (C0, DEL, C1).
CONTROLS = [chr(c) for c in range(0x100) if unicodedata.category(chr(c)) == "Cc"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


#: Encoded words an attacker would try: both encodings, any case, a language
#: tag, white space inside, an empty text, text around them.
ENCODED_WORDS = [
    "=?utf-8?q?hi=0D=0ABcc:_victim@evil.com?=",
    "=?UTF-8?Q?hi=0D=0ABcc:_victim@evil.com?=",
    "=?utf-8?b?" + b64("hi\r\nFrom: boss@example.com\r\nReply-To: thief@evil.com") + "?=",
    "=?UTF-8?B?" + b64("x\r\nContent-Type: text/html\r\n\r\n<a href=//evil.com>") + "?=",
    "=?utf-8*en?q?hi=0D=0ABcc:_victim@evil.com?=",
    "=?utf-8?q?hi=0D=0A Bcc: victim@evil.com?=",
    "=? utf-8 ? q ?hi?=",
    "=?utf-8?q??=",
    "=?iso-8859-1?q?=0D=0A?=",
    "Hello =?utf-8?q?=0D=0ABcc:_v@evil.com?= world",
    "=?x?y?" + "z" * 200 + "?=",
]
#: Look-alikes that are not encoded words and stay allowed.
ALLOWED = [
    "Hello",
    "안녕하세요, 홍길동 님 — 문의 (re: Hello)",
    "100% sure? = yes?",
    "= ? not an encoded word ? =",
    "a=?b",
    "x ?= y",
    "=?utf-8?q?no end",
    "emoji 📨",
    "",
]


@pytest.mark.parametrize("char", LINE_BREAKS + CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_every_line_break_and_control_character_is_refused(char):
    assert header_value_problem(f"Hello{char}Bcc: victim@evil.com") is not None
    assert address_problem(f"user{char}@example.com") is not None


def test_the_refused_set_covers_what_the_email_package_refuses():
    assert set(LINE_BREAKS) >= {"\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"}
    assert {"\x80", "\x9f", "\x7f", "\x00"} <= set(CONTROLS)


@pytest.mark.parametrize("value", ENCODED_WORDS)
def test_encoded_words_are_refused(value):
    assert has_encoded_word(value)
    assert "encoded-word" in (header_value_problem(value) or "")


@pytest.mark.parametrize("value", ALLOWED)
def test_look_alikes_are_allowed(value):
    assert header_value_problem(value) is None


@pytest.mark.parametrize(
    "address",
    [
        "victim%evil.com@example.org",
        "evil.com!victim@example.org",
        '"victim%evil.com"@example.org',
        "Kim <victim%evil.com@example.org>",
        "=?utf-8?q?a=2C_victim=40evil.com=2C_b?=@example.org",
        "=?utf-8?q?Kim=0D=0ABcc:_v@evil.com?= <user@example.com>",
        '"=?utf-8?q?Kim?=" <user@example.com>',
        "user@example.com\u2028Bcc: victim@evil.com",
    ],
)
def test_routing_and_encoded_words_in_an_address_are_refused(address):
    assert address_problem(address) is not None


@pytest.mark.parametrize(
    "address",
    ["user@example.com", "o'brien+tag@example.com", "Kim <user@example.com>", "홍길동 <user@example.com>"],
)
def test_ordinary_addresses_are_allowed(address):
    assert address_problem(address) is None


def test_a_long_value_is_read_in_linear_time():
    # Many encoded-word starts and no end: a backtracking pattern takes minutes here.
    value = "=?a?b?c" * 80_000
    started = time.perf_counter()
    assert header_value_problem(value) is None
    assert time.perf_counter() - started < 2.0
