"""The demo form in headless Chromium (Debian's package), driven by Playwright,
against the real server, a real Valkey and the real STARTTLS + AUTH SMTP server."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from mailhub.settings import Settings
from tests.browser import WAIT_MS, paths, requests_of, screenshot, violations, watch_policy
from tests.helpers import eventually, running_worker
from tests.live_server import Live, serving
from tests.processes import MailhubProcess
from tests.smtp_server import Fault

pytestmark = pytest.mark.browser


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[Live]:
    """The server only: each test starts the worker when it suits it."""
    async with serving(replace(settings, demo_recipient="owner@example.com")) as live:
        yield live


async def test_the_form_shows_a_retried_delivery_live(page, site, store, settings, smtp):
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 try again later"))
    requests = requests_of(page)
    await watch_policy(page)
    await page.goto(site.url + "/")
    await expect(page.locator("input[name=to]")).to_have_value("owner@example.com")
    await page.locator("form button[type=submit]").click()
    # The worker starts once the page listens, so every transition is seen live.
    await eventually(
        lambda: site.hub.subscription_count == 1, timeout=WAIT_MS / 1000, what="the page's EventSource"
    )
    status = page.get_by_role("status")
    async with running_worker(store, settings):
        await expect(status.locator(".event-success")).to_contain_text(
            "Delivered to owner@example.com on attempt 2", timeout=WAIT_MS
        )
    await expect(status).to_have_attribute("aria-live", "polite")
    await expect(status.locator("li > span")).to_have_text(
        [
            "Queued for owner@example.com",
            "Attempt 1: sending…",
            re.compile(r"^Attempt 1 failed \(temporary failure, retrying\); retry scheduled in "),
            "Attempt 2: sending…",
            "Delivered to owner@example.com on attempt 2",
        ]
    )
    await expect(page.locator("#mode")).to_have_text("Live updates from the server.")
    await screenshot(page, "demo-form-delivered.png")
    [mail] = await smtp.handler.wait_for_count(1)
    assert mail.rcpt_tos == ["owner@example.com"]
    assert mail.message.get_content().strip() == "Hello Kim, thank you for getting in touch!"
    [submit] = [r for r in requests if r.method == "POST"]
    assert len(submit.headers["idempotency-key"]) == 36
    assert "api/v1/email/events" in paths(requests)
    assert "api/v1/email/result" not in paths(requests)  # live, not polled
    assert await violations(page) == []  # the page works under its Content-Security-Policy


async def test_swagger_ui_works_under_the_page_policy_and_inline_script_does_not_run(page, site):
    await watch_policy(page)
    await page.goto(site.url + "/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("mailhub", timeout=WAIT_MS)
    await page.locator(".opblock-summary", has_text="/api/v1/email/received").first.click()
    await expect(page.locator(".opblock-body").first).to_be_visible()
    assert await violations(page) == []
    ran = await page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.injected = true'; document.body.append(s); return !!window.injected; }"
    )
    assert ran is False
    assert any(v.startswith("script-src") for v in await violations(page))


async def test_a_refused_recipient_shows_failed_with_the_public_reason(page, site, store, settings, smtp):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    await page.goto(site.url + "/")
    await page.locator("input[name=to]").fill("nobody@example.com")
    await page.locator("form button[type=submit]").click()
    failed = page.get_by_role("status").locator(".event-failed")
    async with running_worker(store, settings):
        await expect(failed).to_contain_text("Failed: ", timeout=WAIT_MS)
    await expect(failed).to_contain_text("the receiving server refused the message")
    await expect(failed).not_to_contain_text("550")
    await expect(page.get_by_role("status")).to_have_class("card status done failed")
    await screenshot(page, "demo-form-failed.png")


async def test_a_field_error_shows_next_to_its_field(page, site):
    await page.goto(site.url + "/")
    to = page.locator("input[name=to]")
    await to.fill("not an address")
    await page.locator("textarea[name=body]").fill("   ")
    await page.locator("form button[type=submit]").click()
    to_error = page.locator("#to-error")
    await expect(to_error).to_be_visible(timeout=WAIT_MS)
    await expect(to_error).to_contain_text("Not a valid email address")
    await expect(to).to_have_attribute("aria-invalid", "true")
    await expect(to).to_be_focused()
    await expect(page.locator("#body-error")).to_contain_text("Must not be empty.")
    assert await to.evaluate("input => input.nextElementSibling.id") == "to-error"
    await expect(page.locator("#subject-error")).to_be_hidden()
    await expect(page.get_by_role("status")).to_be_hidden()
    await screenshot(page, "demo-form-field-error.png")


@pytest.mark.parametrize("breakage", ["no EventSource", "stream fails"])
async def test_without_live_updates_polling_still_reaches_the_result(
    page, site, store, settings, smtp, breakage
):
    if breakage == "no EventSource":
        await page.add_init_script("delete window.EventSource;")
        said = "not available in this browser"
    else:
        await page.route("**/api/v1/email/events*", lambda route: route.abort())
        said = "The live connection failed"
    requests = requests_of(page)
    await page.goto(site.url + "/")
    await page.locator("form button[type=submit]").click()
    status = page.get_by_role("status")
    async with running_worker(store, settings):
        await expect(status.locator(".event-success")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#mode")).to_contain_text(said)
    await expect(page.locator("#mode")).to_contain_text("checks for news now and then")
    assert "api/v1/email/result" in paths(requests)
    await smtp.handler.wait_for_count(1)


async def test_zero_config_run_shows_delivery_within_2_seconds_and_the_inbox_has_it(
    browser: Browser, tmp_path: Path
):
    with MailhubProcess(cwd=tmp_path, env={}) as server:
        page = await browser.new_page()
        await watch_policy(page)
        await page.goto(server.url + "/")
        await expect(page.locator("input[name=to]")).to_have_value("you@example.com")
        await expect(page.locator("#capture-note")).to_be_visible()
        started = time.monotonic()
        await page.locator("form button[type=submit]").click()
        await expect(page.get_by_role("status").locator(".event-success")).to_be_visible(timeout=2000)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"delivered state shown after {elapsed:.2f}s"
        await page.locator("#inbox-link").click()
        await expect(page.locator(".mail")).to_contain_text("Hello from the contact form")
        await expect(page.locator(".mail")).to_contain_text("Hello Kim, thank you")
        await screenshot(page, "dev-inbox.png")
        assert await violations(page) == []
        await page.close()
        assert server.stop() == 0
