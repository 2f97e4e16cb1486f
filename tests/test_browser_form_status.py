"""The built-in thank-you page in headless Chromium: with JavaScript on it follows the mail live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from mailhub.forms.definitions import capture_contact_form
from tests.browser import WAIT_MS
from tests.helpers import running_worker
from tests.live_server import Live, serving

pytestmark = pytest.mark.browser

GOOD = {"name": "Kim", "email": "kim@example.org", "message": "Hello"}


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page whose browser asks for Korean."""
    context = await browser.new_context(locale="ko-KR")
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.fixture
async def site(settings) -> AsyncIterator[Live]:  # type: ignore[no-untyped-def]
    forms = {"contact": capture_contact_form("owner@example.com")}
    async with serving(replace(settings, forms=forms, allowed_recipients=())) as live:
        yield live


async def _queued(site: Live) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{site.url}/api/v1/forms/contact", json=GOOD) as response:
            return (await response.json())["task_id"]


@pytest.mark.parametrize("live_updates", [True, False], ids=["sse", "polling"])
async def test_the_page_follows_the_mail_until_it_is_sent(page, site, store, settings, live_updates):
    task_id = await _queued(site)
    if not live_updates:
        await page.route("**/api/v1/email/events**", lambda route: route.abort())
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await page.goto(f"{site.url}/forms/thanks?task_id={task_id}")
    state = page.locator("#form-state")
    await expect(state).to_have_text("메시지를 보내는 중입니다…")
    await expect(page.locator("#form-live")).to_be_visible()
    async with running_worker(store, settings):
        await expect(state).to_have_text("메시지를 보냈습니다.", timeout=WAIT_MS)
    await expect(page.locator("#form-live")).to_be_hidden()
    assert len(navigations) == 1  # followed in place: no refresh


async def test_without_javascript_the_page_refreshes_until_the_mail_is_sent(browser, site, store, settings):
    task_id = await _queued(site)
    context = await browser.new_context(java_script_enabled=False)
    try:
        page = await context.new_page()
        await page.goto(f"{site.url}/forms/thanks?task_id={task_id}")
        await expect(page.locator("#form-state")).to_have_text("Sending your message…")
        await expect(page.locator("#form-follow")).to_be_visible()
        async with running_worker(store, settings):
            await expect(page.locator("#form-state")).to_have_text("Your message was sent.", timeout=WAIT_MS)
        assert await page.locator("#form-follow").count() == 0  # final: no more refreshing
    finally:
        await context.close()
