"""CAPTCHA checks against a real local siteverify server: good sends, anything else sends nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mailhub.errors import CaptchaRefused
from mailhub.forms.captcha import CaptchaVerifier
from mailhub.forms.definitions import capture_contact_form
from mailhub.store import keys
from mailhub.store.form_ledger import FormLedger
from mailhub.web import appkeys
from mailhub.web.app import create_app
from tests.helpers import free_port, wait_for_status
from tests.verify_server import verify_server

FORM = "/api/v1/forms/contact"
GOOD = {"name": "Kim", "email": "kim@example.org", "message": "Hello"}
SECRETS = {"turnstile": "test-secret", "hcaptcha": "test-secret", "recaptcha": "test-secret"}


@pytest.fixture
async def verify():
    async with verify_server() as server:
        yield server


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def _verifier(session, redis, url, timeout=2.0) -> CaptchaVerifier:
    return CaptchaVerifier(session, SECRETS, FormLedger(redis), verify_url=url, timeout=timeout)


@pytest.mark.parametrize("provider", ["turnstile", "hcaptcha", "recaptcha"])
async def test_a_good_token_passes_with_one_post_of_secret_response_and_remoteip(
    verify, session, redis, provider
):
    await _verifier(session, redis, verify.url).verify(provider, "good-1", "203.0.113.7")
    assert verify.requests == [{"secret": "test-secret", "response": "good-1", "remoteip": "203.0.113.7"}]


@pytest.mark.parametrize(
    ("token", "code"),
    [("bad", "captcha_invalid"), ("broken", "captcha_unverifiable"), ("x" * 9000, "captcha_invalid")],
)
async def test_bad_or_unverifiable_tokens_are_refused(verify, session, redis, token, code):
    with pytest.raises(CaptchaRefused) as refused:
        await _verifier(session, redis, verify.url).verify("turnstile", token, "203.0.113.7")
    assert refused.value.code == code


async def test_a_timeout_is_refused_and_the_token_may_be_tried_again(verify, session, redis):
    verifier = _verifier(session, redis, verify.url, timeout=0.3)
    with pytest.raises(CaptchaRefused) as refused:
        await verifier.verify("turnstile", "slow", "203.0.113.7")
    assert refused.value.code == "captcha_unverifiable"
    assert await FormLedger(redis).claim_token("turnstile", "slow")


async def test_a_refused_connection_is_unverifiable(session, redis):
    url = f"http://127.0.0.1:{free_port()}/siteverify"
    with pytest.raises(CaptchaRefused) as refused:
        await _verifier(session, redis, url).verify("turnstile", "good-1", "203.0.113.7")
    assert refused.value.code == "captcha_unverifiable"


async def test_a_reused_token_is_refused_without_asking_again(verify, session, redis):
    verifier = _verifier(session, redis, verify.url)
    await verifier.verify("turnstile", "good-2", "203.0.113.7")
    with pytest.raises(CaptchaRefused) as refused:
        await verifier.verify("turnstile", "good-2", "203.0.113.7")
    assert refused.value.code == "captcha_invalid"
    assert len(verify.requests) == 1


async def test_a_token_the_provider_calls_used_is_refused(verify, session, redis):
    await _verifier(session, redis, verify.url).verify("turnstile", "good-3", "203.0.113.7")
    await redis.flushall()  # mailhub forgot; the provider did not
    with pytest.raises(CaptchaRefused):
        await _verifier(session, redis, verify.url).verify("turnstile", "good-3", "203.0.113.7")


@pytest.fixture
async def captcha_client(aiohttp_client: Any, settings, verify):
    form = replace(capture_contact_form("owner@example.com"), captcha="turnstile")
    app = create_app(
        replace(settings, forms={"contact": form}, captcha_secrets=SECRETS, captcha_verify_url=verify.url)
    )
    return await aiohttp_client(app)


async def test_the_form_sends_with_a_good_token(captcha_client, store, worker, smtp, verify):
    response = await captcha_client.post(FORM, data={**GOOD, "cf-turnstile-response": "good-form"})
    assert response.status == 200
    await wait_for_status(store, (await response.json())["task_id"])
    [mail] = await smtp.handler.wait_for_count(1)
    assert "cf-turnstile-response" not in mail.data.decode()
    assert verify.requests[0]["response"] == "good-form"


@pytest.mark.parametrize(
    ("token", "code"), [(None, "captcha_missing"), ("", "captcha_missing"), ("bad", "captcha_invalid")]
)
async def test_the_form_sends_nothing_without_a_good_token(captcha_client, redis, smtp, token, code):
    posted = GOOD if token is None else {**GOOD, "cf-turnstile-response": token}
    response = await captcha_client.post(FORM, data=posted)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == code
    assert await redis.exists(keys.QUEUE) == 0


async def test_the_form_sends_nothing_when_verification_times_out(captcha_client, redis):
    captcha_client.app[appkeys.FORMS].verifier.timeout = 0.3  # the real 5 s, shortened for the test
    response = await captcha_client.post(FORM, data={**GOOD, "cf-turnstile-response": "slow"})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "captcha_unverifiable"
    assert await redis.exists(keys.QUEUE) == 0


async def test_a_field_error_does_not_spend_the_token(captcha_client, verify):
    response = await captcha_client.post(
        FORM, data={**GOOD, "email": "nope", "cf-turnstile-response": "good-4"}
    )
    assert response.status == 422
    assert verify.requests == []


async def test_a_resend_with_the_same_idempotency_key_needs_no_new_token(captcha_client, redis, verify):
    headers = {"Idempotency-Key": "draft-1"}
    posted = {**GOOD, "cf-turnstile-response": "good-5"}
    first = await (await captcha_client.post(FORM, data=posted, headers=headers)).json()
    second = await captcha_client.post(FORM, data=posted, headers=headers)
    assert second.status == 200
    assert (await second.json())["task_id"] == first["task_id"]
    assert len(verify.requests) == 1
    assert await redis.xlen(keys.QUEUE) == 1


async def test_the_captcha_page_answer_of_a_plain_post(captcha_client):
    response = await captcha_client.post(FORM, data=GOOD, headers={"Accept": "text/html"})
    assert response.status == 403
    assert "Please complete the human check" in await response.text()


async def test_concurrent_posts_of_one_token_send_once(captcha_client, redis):
    posted = {**GOOD, "cf-turnstile-response": "good-6"}
    answers = await asyncio.gather(*(captcha_client.post(FORM, data=posted) for _ in range(5)))
    assert sorted(r.status for r in answers) == [200, 403, 403, 403, 403]
    assert await redis.xlen(keys.QUEUE) == 1
