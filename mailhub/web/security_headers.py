"""Headers every response carries, and those the HTML pages add.

- No `Server` banner: it named the interpreter and aiohttp's exact version.
- `X-Content-Type-Options: nosniff` on every response: a browser never
  guesses a type, so JSON or a static file is never run as a script or page.
- HTML pages (the demo form, /docs, /dev/inbox) allow only this origin's
  scripts, styles and connections, no inline script, no plug-ins, and may
  not be framed by another site (clickjacking). A page with other needs (a
  CAPTCHA widget's script and frame, say) sets its own
  `Content-Security-Policy` or `X-Frame-Options`; what a handler set is kept.

aiohttp adds its banner before this runs and never after, so removing it
here is enough for every response the application makes (JSON, static
files, errors, 404s). Requests aiohttp cannot parse never reach the
application: `web.protocol` answers those.
"""

from __future__ import annotations

from aiohttp import hdrs, web

PAGE_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data:",  # Swagger UI's icons are data: URIs in its stylesheet
        "object-src 'none'",
        "base-uri 'none'",
        # No form-action: a form page posts here, and the answer may be a 303 to
        # the owner's own site (a form's redirect_success), which it would block.
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Frame-Options": "DENY",
    # Not no-referrer: a form posted from a page of ours would then carry
    # `Origin: null` (Fetch spec), which a form's `origins` check refuses, and
    # its error page would lose the way back to the form.
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


def strip_and_mark(response: web.StreamResponse) -> None:
    """No Server banner, and nosniff: what every response gets, application or not."""
    response.headers.popall(hdrs.SERVER, None)
    response.headers.setdefault(hdrs.X_CONTENT_TYPE_OPTIONS, "nosniff")


async def add(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """The `on_response_prepare` signal: every response; the page headers on HTML."""
    strip_and_mark(response)
    if response.content_type == "text/html":
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(add)
