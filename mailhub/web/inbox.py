"""The development inbox (capture mode only): what would have been sent."""

from __future__ import annotations

from html import escape

from aiohttp import web

from mailhub.store import inbox
from mailhub.web import appkeys

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mailhub dev inbox</title><link rel="stylesheet" href="/static/style.css"></head>
<body><main class="inbox"><h1>Dev inbox</h1>
<p class="note">Capture mode: these messages were caught locally, not delivered.
Set <code>SMTP_HOST</code> to send real mail.</p>
{items}
</main></body></html>"""

_ITEM = """<article class="mail"><header><strong>{subject}</strong>
<span>to {to}, from {sender}</span><time>{received_at}</time></header>
<pre>{body}</pre></article>"""


async def messages(request: web.Request) -> web.Response:
    return web.json_response(await inbox.mails(request.app[appkeys.REDIS]))


async def page(request: web.Request) -> web.Response:
    mails = await inbox.mails(request.app[appkeys.REDIS])
    items = (
        "\n".join(
            _ITEM.format(
                subject=escape(m["subject"]),
                to=escape(", ".join(m["to"])),
                sender=escape(m["from"]),
                received_at=escape(m["received_at"]),
                body=escape(m["body"]),
            )
            for m in mails
        )
        or "<p>No mail yet.</p>"
    )
    return web.Response(text=_PAGE.format(items=items), content_type="text/html")
