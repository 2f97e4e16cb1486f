"""The contact pages in headless Chromium: the plain form without JavaScript, and the
same form with mailhub.js (live status, drafts across reloads, field errors in the
visitor's language), against the real server, Valkey and STARTTLS + AUTH SMTP server."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Locator, Page, Request, Route, expect

from mailhub.forms.definitions import capture_contact_form
from mailhub.settings import Settings
from mailhub.store import keys
from mailhub.store.tasks import TaskStore
from tests.browser import WAIT_MS, paths, requests_of, screenshot, violations, watch_policy
from tests.helpers import eventually, free_port, running_worker
from tests.live_server import Live, serving
from tests.processes import ROOT
from tests.smtp_server import Fault
from tests.verify_server import verify_server

pytestmark = pytest.mark.browser

LOCALES = {
    name: json.loads((ROOT / "static" / "locales" / f"{name}.json").read_text()) for name in ("en", "ko")
}
EN, KO = LOCALES["en"]["script"], LOCALES["ko"]["script"]
#: Hostile-looking but valid: braces and markup must reach the mail as typed.
NAME = "Kim {message} {{x}}"
MESSAGE = "<b>hi</b> {name} {{x}}\nSecond line."


@contextlib.asynccontextmanager
async def contact_site(
    settings: Settings, form: dict[str, Any] | None = None, **changes: Any
) -> AsyncIterator[Live]:
    """The server (no worker: each test starts it when it suits it) with the example
    `contact` form addressed to owner@example.com, its definition changed by `form`."""
    contact = replace(capture_contact_form("owner@example.com"), **(form or {}))
    async with serving(replace(settings, forms={"contact": contact}, **changes)) as live:
        yield live


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[Live]:
    """Asked for before `page`, so the page is closed before the server stops: a stream
    the page opens while the server shuts down would hold the shutdown up."""
    async with contact_site(settings) as live:
        yield live


async def fill_in(page: Page, email: str = "kim@example.com") -> None:
    await page.locator("#name").fill(NAME)
    await page.locator("#email").fill(email)
    await page.locator("#message").fill(MESSAGE)


def posts(requests: list[Request]) -> list[Request]:
    return [request for request in requests if request.method == "POST"]


async def task_count(store: TaskStore) -> int:
    return len(await store.redis.keys(keys.task("*")))


def status(page: Page) -> Locator:
    return page.locator("[data-mailhub-status]")


def assert_the_contact_mail(mail: Any) -> None:
    """The owner's mail: to the form's recipient, Reply-To the visitor, values as typed."""
    assert mail.rcpt_tos == ["owner@example.com"]
    assert mail.message["Reply-To"] == "kim@example.com"
    assert mail.message["Subject"] == f"Contact: {NAME}"
    assert mail.message["From"].addresses[0].addr_spec == "noreply@example.com"
    body = mail.message.get_content().replace("\r\n", "\n")
    assert body == f"From {NAME} <kim@example.com>:\n\n{MESSAGE}\n"


async def test_the_plain_page_posts_without_javascript_and_lands_on_the_thank_you_page(
    site: Live, browser: Browser, store: TaskStore, settings: Settings, smtp: Any
) -> None:
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    requests = requests_of(page)
    await page.goto(site.url + "/contact")
    await fill_in(page)
    async with running_worker(store, settings):
        await page.locator("button[type=submit]").click()
        await expect(page).to_have_url(re.compile(r"/forms/thanks\?task_id=[0-9a-f-]{36}"), timeout=WAIT_MS)
        [mail] = await smtp.handler.wait_for_count(1)
    await expect(page.locator("h1")).to_have_text(LOCALES["en"]["pages"]["thanks_title"])
    [post] = posts(requests)
    headers = await post.all_headers()
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert "text/html" in headers["accept"]
    assert_the_contact_mail(mail)
    await screenshot(page, "contact-plain-thanks.png")
    await context.close()


async def test_the_script_shows_the_delivery_live_without_a_page_change(
    site: Live, page: Page, store: TaskStore, settings: Settings, smtp: Any
) -> None:
    requests = requests_of(page)
    await watch_policy(page)
    await page.goto(site.url + "/contact-js")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await fill_in(page)
    await page.locator("button[type=submit]").click()
    # The worker starts once the page follows the task, so "pending" is seen first.
    await eventually(
        lambda: site.hub.subscription_count == 1, timeout=WAIT_MS / 1000, what="the page's EventSource"
    )
    await expect(status(page)).to_have_text(EN["queued"])
    await expect(status(page)).to_have_attribute("data-mailhub-state", "pending")
    await expect(page.locator("button[type=submit]")).to_be_disabled()
    await screenshot(page, "contact-js-pending.png")
    async with running_worker(store, settings):
        await expect(status(page)).to_have_attribute("data-mailhub-state", "success", timeout=WAIT_MS)
    await expect(status(page)).to_have_text(EN["success"])
    await expect(status(page)).to_have_attribute("role", "status")
    await screenshot(page, "contact-js-delivered.png")
    assert navigations == [] and page.url == site.url + "/contact-js"
    [mail] = await smtp.handler.wait_for_count(1)
    assert_the_contact_mail(mail)
    [post] = posts(requests)
    assert post.headers["content-type"] == "application/json"
    assert post.headers["accept"] == "application/json"
    assert len(post.headers["idempotency-key"]) == 36
    assert "api/v1/email/events" in paths(requests)
    assert "api/v1/email/result" not in paths(requests)  # live, not polled
    # Sent: the draft is gone and the form is empty again.
    assert await page.evaluate("Object.keys(localStorage)") == []
    await expect(page.locator("#message")).to_have_value("")
    await expect(page.locator("button[type=submit]")).to_be_enabled()
    assert await violations(page) == []  # the page works under its Content-Security-Policy


async def test_a_reload_while_the_mail_waits_resumes_it_and_sends_once(
    site: Live, page: Page, store: TaskStore, settings: Settings, smtp: Any
) -> None:
    requests = requests_of(page)
    await page.goto(site.url + "/contact-js")
    await fill_in(page)
    await page.locator("button[type=submit]").click()
    await expect(status(page)).to_have_text(EN["queued"], timeout=WAIT_MS)
    await page.reload()
    # The page follows the stored task again: what was typed is back, nothing is posted.
    await expect(status(page)).to_have_text(EN["queued"], timeout=WAIT_MS)
    await expect(page.locator("#message")).to_have_value(MESSAGE)
    await expect(page.locator("button[type=submit]")).to_be_disabled()
    async with running_worker(store, settings):
        await expect(status(page)).to_have_text(EN["success"], timeout=WAIT_MS)
    assert len(posts(requests)) == 1
    [mail] = await smtp.handler.wait_for_count(1)
    assert_the_contact_mail(mail)
    assert await task_count(store) == 1
    assert await page.evaluate("Object.keys(localStorage)") == []


async def test_an_answer_lost_on_the_way_is_resent_with_the_same_key_and_sends_once(
    site: Live, page: Page, store: TaskStore, settings: Settings, smtp: Any
) -> None:
    async def lose_the_answer(route: Route) -> None:
        await route.fetch()  # the server queues the mail...
        await route.abort("connectionreset")  # ...and the page never hears back

    requests = requests_of(page)
    await page.route("**/api/v1/forms/contact", lose_the_answer)
    await page.goto(site.url + "/contact-js")
    await fill_in(page)
    await page.locator("button[type=submit]").click()
    await expect(status(page)).to_have_text(EN["offline"], timeout=WAIT_MS)
    assert await task_count(store) == 1
    await page.unroute("**/api/v1/forms/contact")
    await page.reload()
    async with running_worker(store, settings):
        await expect(status(page)).to_have_text(EN["success"], timeout=WAIT_MS)
    first, again = posts(requests)
    assert first.headers["idempotency-key"] == again.headers["idempotency-key"]
    assert first.post_data == again.post_data
    [mail] = await smtp.handler.wait_for_count(1)
    assert_the_contact_mail(mail)
    assert await task_count(store) == 1
    assert await page.evaluate("Object.keys(localStorage)") == []


async def test_with_a_captcha_a_resend_after_a_reload_needs_no_new_token_and_sends_once(
    page: Page, settings: Settings, store: TaskStore, smtp: Any
) -> None:
    async def with_the_widget(route: Route) -> None:
        # What the Turnstile widget leaves in the form: its token field, filled.
        response = await route.fetch()
        token = '<input type="hidden" name="cf-turnstile-response" value="good-1">'
        await route.fulfill(
            response=response, body=(await response.text()).replace("</form>", f"{token}</form>")
        )

    async def lose_the_answer(route: Route) -> None:
        await route.fetch()
        await route.abort("connectionreset")

    # The provider's script is out of reach here: a stand-in counts the widget's resets.
    await page.add_init_script("window.resets = 0; window.turnstile = {reset: () => window.resets++};")
    captcha = {"captcha_secrets": {"turnstile": "test-secret"}}
    async with verify_server() as verify:
        async with contact_site(
            settings, {"captcha": "turnstile"}, captcha_verify_url=verify.url, **captcha
        ) as site:
            await page.route("**/contact-js", with_the_widget)
            await page.route("**/api/v1/forms/contact", lose_the_answer)
            await page.goto(site.url + "/contact-js")
            await fill_in(page)
            await page.locator("button[type=submit]").click()
            await expect(status(page)).to_have_text(EN["offline"], timeout=WAIT_MS)
            await page.unroute("**/api/v1/forms/contact")
            await page.reload()  # the page's token is the one already spent
            async with running_worker(store, settings):
                await expect(status(page)).to_have_text(EN["success"], timeout=WAIT_MS)
            assert await page.evaluate("window.resets") == 1  # a fresh token for the next mail
        assert [request["response"] for request in verify.requests] == ["good-1"]
    [mail] = await smtp.handler.wait_for_count(1)
    assert_the_contact_mail(mail)
    assert await task_count(store) == 1


async def in_korean(route: Route) -> None:
    """The contact page as a Korean site would serve it."""
    response = await route.fetch()
    page = (await response.text()).replace('<html lang="en">', '<html lang="ko">')
    await route.fulfill(response=response, body=page)


async def test_field_errors_show_next_to_their_fields_in_the_pages_language(
    site: Live, page: Page, store: TaskStore
) -> None:
    await page.route("**/contact-js", in_korean)
    await watch_policy(page)
    await page.goto(site.url + "/contact-js")
    await fill_in(page, email="kim@example")  # a browser takes it; the server does not
    await page.locator("button[type=submit]").click()
    email = page.locator("#email")
    error = page.locator("#email + .mailhub-field-error")
    await expect(error).to_have_text(LOCALES["ko"]["pages"]["field_email"], timeout=WAIT_MS)
    await expect(email).to_have_attribute("aria-invalid", "true")
    await expect(email).to_be_focused()
    error_id = await error.get_attribute("id")
    assert error_id in (await email.get_attribute("aria-describedby") or "").split()
    await expect(status(page)).to_have_text(KO["field_errors"])
    await expect(page.locator(".mailhub-field-error")).to_have_count(1)
    await screenshot(page, "contact-js-field-error-ko.png")
    assert await task_count(store) == 0
    # Corrected, the error goes away and the mail is queued.
    await email.fill("kim@example.com")
    await page.locator("button[type=submit]").click()
    await expect(status(page)).to_have_text(KO["queued"], timeout=WAIT_MS)
    await expect(error).to_be_hidden()
    await expect(email).not_to_have_attribute("aria-invalid", "true")
    assert await violations(page) == []


async def test_without_live_updates_polling_reaches_the_result(
    site: Live, page: Page, store: TaskStore, settings: Settings, smtp: Any
) -> None:
    await page.route("**/api/v1/email/events*", lambda route: route.abort())
    requests = requests_of(page)
    await page.goto(site.url + "/contact-js")
    await fill_in(page)
    await page.locator("button[type=submit]").click()
    async with running_worker(store, settings):
        await expect(status(page)).to_have_text(EN["success"], timeout=WAIT_MS)
    assert "api/v1/email/result" in paths(requests)
    await smtp.handler.wait_for_count(1)


async def test_a_failed_delivery_keeps_what_was_typed_for_another_try(
    site: Live, page: Page, store: TaskStore, settings: Settings, smtp: Any
) -> None:
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    requests = requests_of(page)
    await page.goto(site.url + "/contact-js")
    await fill_in(page)
    await page.locator("button[type=submit]").click()
    async with running_worker(store, settings):
        await expect(status(page)).to_have_text(EN["failed"], timeout=WAIT_MS)
        await expect(status(page)).to_have_attribute("data-mailhub-state", "failed")
        await page.reload()
        await expect(page.locator("#message")).to_have_value(MESSAGE)
        await expect(status(page)).to_be_hidden()  # the failed send is over: not resent by itself
        await page.locator("button[type=submit]").click()  # another try is another mail
        await expect(status(page)).to_have_text(EN["success"], timeout=WAIT_MS)
    first, second = posts(requests)
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    [mail] = await smtp.handler.wait_for_count(1)
    assert_the_contact_mail(mail)


async def test_without_its_texts_the_script_leaves_the_form_a_plain_post(
    site: Live, page: Page, store: TaskStore
) -> None:
    await page.route("**/static/locales/*", lambda route: route.abort())
    await page.goto(site.url + "/contact-js")
    await fill_in(page)
    await page.locator("button[type=submit]").click()
    await expect(page).to_have_url(re.compile(r"/forms/thanks\?task_id="), timeout=WAIT_MS)
    assert await task_count(store) == 1


async def test_a_refusal_shows_a_general_message(page: Page, settings: Settings, store: TaskStore) -> None:
    async with contact_site(settings, form={"origins": ("https://www.example.com",)}) as site:
        await page.goto(site.url + "/contact-js")
        await fill_in(page)
        await page.locator("button[type=submit]").click()
        await expect(status(page)).to_have_text(
            LOCALES["en"]["pages"]["error_origin_not_allowed"], timeout=WAIT_MS
        )
        await expect(status(page)).to_have_attribute("data-mailhub-state", "error")
        await expect(page.locator("button[type=submit]")).to_be_enabled()
    assert await task_count(store) == 0


@contextlib.asynccontextmanager
async def another_site(port: int, contact_page: str) -> AsyncIterator[str]:
    """A site of its own on 127.0.0.1:`port` serving `contact_page` at /contact; yields its origin."""

    async def contact(request: web.Request) -> web.Response:
        return web.Response(text=contact_page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/contact", contact)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_page_on_another_site_sends_through_cors(
    page: Page, settings: Settings, store: TaskStore, smtp: Any
) -> None:
    port = free_port()
    # As on a plain-http site: no crypto.randomUUID, so the script makes the UUID itself.
    await page.add_init_script("delete Crypto.prototype.randomUUID;")
    async with contact_site(settings, cors_origins=(f"http://127.0.0.1:{port}",)) as mailhub:
        contact = (ROOT / "static" / "contact-js.html").read_text()
        contact = contact.replace('"/static/', f'"{mailhub.url}/static/').replace(
            '"/api/', f'"{mailhub.url}/api/'
        )
        async with another_site(port, contact) as origin:
            requests = requests_of(page)
            await page.goto(f"{origin}/contact")
            await fill_in(page)
            await page.locator("button[type=submit]").click()
            async with running_worker(store, settings):
                await expect(status(page)).to_have_text(EN["success"], timeout=WAIT_MS)
    [post] = posts(requests)
    headers = await post.all_headers()
    assert headers["origin"] == origin
    assert post.url == f"{mailhub.url}/api/v1/forms/contact"
    assert "api/v1/email/events" in paths(requests)
    uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(uuid4, headers["idempotency-key"])
    [mail] = await smtp.handler.wait_for_count(1)
    assert_the_contact_mail(mail)
