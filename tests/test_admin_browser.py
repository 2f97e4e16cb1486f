"""The dashboard at /admin in headless Chromium, against the real server, a real Valkey
and the real STARTTLS + AUTH SMTP server: a failed mail listed, re-sent live, deleted."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from playwright.async_api import Browser, Page, Route, expect

from mailhub.notify import notifier
from mailhub.store.tasks import TaskStore
from tests.browser import WAIT_MS, requests_of, screenshot, violations, watch_policy
from tests.helpers import MAIL_JSON, SUBMIT, running_worker, wait_for_status
from tests.live_server import Live, serving
from tests.processes import mailhub_serving
from tests.smtp_server import Fault
from tests.webhook_receiver import SECRET, WebhookReceiver

pytestmark = pytest.mark.browser

TOKEN = "test-admin-token-0123456789abcdef"
HOOK = "http://127.0.0.1:9/mailhub-hooks"


@pytest.fixture
async def site(settings, redis) -> AsyncIterator[Live]:  # type: ignore[no-untyped-def]
    """The server (and a flushed Valkey: the list shows every task in it)."""
    hooks = {"webhook_urls": (HOOK,), "webhook_secret": "whsec_" + base64.b64encode(b"k" * 32).decode()}
    async with serving(replace(settings, admin_token=TOKEN, **hooks)) as live:
        yield live


@pytest.fixture
async def desk(browser: Browser) -> AsyncIterator[Page]:
    """A page the size of a laptop's screen, every policy violation recorded."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        await watch_policy(page)
        yield page
    finally:
        await context.close()


async def submit(live: Live, to: str = "kim@example.com") -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(live.url + SUBMIT, json={**MAIL_JSON, "to": to}) as r,
    ):
        return (await r.json())["task_id"]


async def sign_in(page: Page, live: Live, token: str = TOKEN) -> None:
    await page.goto(live.url + "/admin")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Open the dashboard").click()


async def test_a_failed_mail_is_listed_re_sent_live_and_deleted(desk, site, store, settings, smtp):
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    refused = await submit(site, "nobody@example.com")
    async with running_worker(store, settings):
        await wait_for_status(store, refused)
        for _ in range(3):
            await wait_for_status(store, await submit(site))
    await sign_in(desk, site)
    row = desk.locator(f"tr[data-task-id='{refused}']")
    await expect(row.locator(".col-status")).to_have_text("failed", timeout=WAIT_MS)
    await expect(row.locator(".col-detail")).to_contain_text("550 5.1.1 no such user")
    await expect(desk.locator("#live-state")).to_have_text("Live: updates as they happen.", timeout=WAIT_MS)
    await expect(desk.locator("#stats")).to_contain_text("3 delivered, 1 failed")
    await expect(desk.locator("#chart rect.bar-failed")).to_have_count(60)
    await expect(desk.locator("#webhooks")).to_contain_text(HOOK)
    await expect(desk.locator("#alerts")).to_have_text("Alert mails are off (ALERT_EMAIL).")
    await row.click()
    await expect(desk.locator("#detail-timeline li")).to_have_count(3)
    await expect(desk.locator("#detail-timeline")).to_contain_text("failed")
    requests = requests_of(desk)
    await desk.get_by_role("button", name="Re-send", exact=True).click()
    async with running_worker(store, settings):
        await expect(row.locator(".col-status")).to_have_text("success", timeout=WAIT_MS)
    await expect(desk.locator("#detail-timeline li")).to_have_count(6, timeout=WAIT_MS)
    await expect(desk.locator("#detail-timeline li").nth(3)).to_contain_text("requeued")
    # Live: the row changed by the admin event stream, the list was not fetched again.
    assert not [r for r in requests if r.method == "GET" and "/api/v1/admin/tasks?" in r.url]
    await screenshot(desk, "admin-dashboard.png")
    desk.on("dialog", lambda dialog: dialog.accept())
    await desk.get_by_role("button", name="Delete").click()
    await expect(row).to_have_count(0, timeout=WAIT_MS)
    await expect(desk.locator("#detail")).to_be_hidden()
    async with aiohttp.ClientSession() as session:
        async with session.get(site.url + "/api/v1/email/result", params={"task_id": refused}) as response:
            assert response.status == 404
    assert await violations(desk) == []


async def test_a_mail_deleted_elsewhere_vanishes_even_while_the_list_reloads(desk, site):
    task_id = await submit(site)
    await sign_in(desk, site)
    row = desk.locator(f"tr[data-task-id='{task_id}']")
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    await expect(desk.locator("#live-state")).to_have_text("Live: updates as they happen.", timeout=WAIT_MS)
    read, release = asyncio.Event(), asyncio.Event()

    async def hold(route: Route) -> None:
        answer = await route.fetch()  # the list as it is now: the mail still in it
        read.set()
        await release.wait()
        await route.fulfill(response=answer)

    await desk.route("**/api/v1/admin/tasks?*", hold)
    await desk.get_by_role("button", name="Show").click()
    await asyncio.wait_for(read.wait(), WAIT_MS / 1000)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"{site.url}/api/v1/admin/tasks/{task_id}", headers=headers) as response:
            assert response.status == 204
    await expect(row).to_have_count(0, timeout=WAIT_MS)  # the stream's `deleted`
    release.set()  # now the list read before the deletion arrives
    await expect(desk.locator("#tasks-note")).to_have_text("No mail here.", timeout=WAIT_MS)
    await expect(row).to_have_count(0)


async def test_a_wrong_token_is_refused_and_not_kept(desk, site):
    await sign_in(desk, site, "not-the-admin-token-at-all")
    await expect(desk.locator("#login-error")).to_have_text("This token was refused.", timeout=WAIT_MS)
    await expect(desk.locator("#dashboard")).to_be_hidden()
    assert await desk.evaluate("sessionStorage.getItem('mailhub-admin-token')") is None
    await desk.get_by_label("Token").fill(TOKEN)
    await desk.get_by_role("button", name="Open the dashboard").click()
    await expect(desk.locator("#dashboard")).to_be_visible(timeout=WAIT_MS)
    await desk.reload()  # kept for the tab: no second prompt
    await expect(desk.locator("#dashboard")).to_be_visible(timeout=WAIT_MS)
    await expect(desk.locator("#login")).to_be_hidden()


async def test_a_zero_config_run_opens_the_dashboard_without_a_token(desk, tmp_path):
    async with mailhub_serving(cwd=tmp_path, env={}) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + SUBMIT, json=MAIL_JSON) as response:
                task_id = (await response.json())["task_id"]
        await desk.goto(server.url + "/admin")
        await expect(desk.locator("#dashboard")).to_be_visible(timeout=WAIT_MS)
        await expect(desk.locator("#login")).to_be_hidden()
        await expect(desk.locator("#sending")).to_contain_text("Capture mode")
        row = desk.locator(f"tr[data-task-id='{task_id}']")
        await expect(row.locator(".col-status")).to_have_text("success", timeout=WAIT_MS)
        await expect(desk.locator("#live-state")).to_have_text(
            "Live: updates as they happen.", timeout=WAIT_MS
        )
        assert await violations(desk) == []


async def test_the_dashboard_shows_webhook_delivery_and_where_alerts_go(desk, settings, redis):
    async with WebhookReceiver() as receiver:
        receiver.answers.append(500)
        notified = replace(
            settings,
            admin_token=TOKEN,
            webhook_urls=(receiver.url,),
            webhook_secret=SECRET,
            webhook_retry_base_delay=0.3,
            alert_email="owner@example.com",
        )
        store = TaskStore.from_settings(redis, notified)
        async with serving(notified) as live, running_worker(store, notified), notifier.running(notified):
            await wait_for_status(store, await submit(live))
            await receiver.wait_for("email.delivered", 2)  # a 500, then a 200
            await sign_in(desk, live)
            cells = desk.locator("#webhook-rows tr td")
            await expect(cells).to_have_text(
                [receiver.url, "0", "1", "1", "0", re.compile(r"^HTTP 500 \(.+\)$")], timeout=WAIT_MS
            )
            await expect(desk.locator("#alerts")).to_contain_text("Alert mails go to owner@example.com")
            await screenshot(desk, "dashboard-webhooks.png")
