"""Helpers of the browser tests: headless Chromium (Debian's package) driven by
Playwright; the `browser` and `page` fixtures live in conftest."""

from __future__ import annotations

from playwright.async_api import Page, Request, ViewportSize

from tests.processes import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = ROOT / "test-artifacts"
#: Generous for a loaded CI machine; the events themselves take milliseconds.
WAIT_MS = 10_000
#: The browser tests' page size: a phone.
VIEWPORT: ViewportSize = {"width": 390, "height": 844}


def requests_of(page: Page) -> list[Request]:
    seen: list[Request] = []
    page.on("request", lambda request: seen.append(request))
    return seen


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def paths(requests: list[Request]) -> list[str]:
    return [request.url.split("?")[0].split("/", 3)[-1] for request in requests]


async def watch_policy(page: Page) -> None:
    """Record every Content-Security-Policy violation of the page in `window.violations`."""
    await page.add_init_script(
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.violations.push(`${e.effectiveDirective} ${e.blockedURI}`));"
    )


async def violations(page: Page) -> list[str]:
    return await page.evaluate("window.violations")
