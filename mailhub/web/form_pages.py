"""The built-in pages of plain (no JavaScript) form posts: thank-you, field errors, refusal.

Every value shown is HTML-escaped; the pages load no inline script or style
(the thank-you page's live status comes from /static/form-status.js).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from urllib.parse import quote, urlsplit

from mailhub.forms.definitions import FormDefinition
from mailhub.forms.fields import Problem
from mailhub.forms.templates import render

THANKS_PATH = "/forms/thanks"
FORM_PATH = "/api/v1/forms/{form_id}"
_FINAL = ("success", "failed")


def page(language: str, title: str, content: str, *, head: str = "") -> str:
    return (
        f'<!doctype html>\n<html lang="{escape(language)}"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{escape(title)}</title><link rel="stylesheet" href="/static/style.css">{head}</head>\n'
        f'<body><main class="form-page">\n{content}\n</main></body></html>\n'
    )


def thanks_url(task_id: str, language: str | None) -> str:
    query = f"task_id={quote(task_id)}"
    return f"{THANKS_PATH}?{query}&lang={quote(language)}" if language else f"{THANKS_PATH}?{query}"


def thanks_page(
    texts: Mapping[str, str],
    language: str,
    task_id: str,
    document: Mapping[str, object] | None,
    *,
    result_url: str,
    events_url: str,
) -> str:
    """The thank-you page: the task's status now, followed live by the script when it runs."""
    status = str(document["status"]) if document else "unknown"
    reason = str(document.get("reason", "")) if document else ""
    following = status not in _FINAL and document is not None
    head = ""
    if following:
        # Without JavaScript the page refreshes itself until the mail is sent.
        head = '\n<noscript><meta http-equiv="refresh" content="3"></noscript>'
        head += '\n<script src="/static/form-status.js" defer></script>'
    data = {
        "task-id": task_id,
        "result-url": result_url,
        "events-url": events_url,
        "text-pending": texts["status_pending"],
        "text-success": texts["status_success"],
        "text-failed": texts["status_failed"],
    }
    attributes = " ".join(f'data-{name}="{escape(value)}"' for name, value in data.items())
    note = ""
    if following:
        note = (
            f'<p class="note" id="form-follow">{escape(texts["status_refresh"])}</p>'
            f'<p class="note" id="form-live" hidden>{escape(texts["status_live"])}</p>'
        )
    content = (
        f'<section class="card status {escape(status)}" id="form-status" {attributes}>\n'
        f"<h1>{escape(texts['thanks_title'])}</h1>\n<p>{escape(texts['thanks_lead'])}</p>\n"
        f'<p class="state" id="form-state" role="status" aria-live="polite">'
        f"{escape(texts.get('status_' + status, ''))}</p>\n"
        f'<p class="reason" id="form-reason"{"" if reason else " hidden"}>{escape(reason)}</p>\n'
        f"{note}\n</section>"
    )
    return page(language, texts["thanks_title"], content, head=head)


def errors_page(
    texts: Mapping[str, str],
    language: str,
    form: FormDefinition,
    posted: Mapping[str, object],
    problems: Mapping[str, Problem],
    back: str | None,
) -> str:
    """The field errors next to their fields, in a form holding what was typed (escaped)."""
    rows = [
        _field_row(texts, rule.name, posted, problems.get(rule.name), rule.multiline) for rule in form.fields
    ]
    action = FORM_PATH.format(form_id=quote(form.form_id))
    if form.captcha:
        ending = f'<p class="note">{escape(texts["captcha_again"])}</p>'
    else:
        ending = f'<button type="submit">{escape(texts["send_again"])}</button>'
    content = (
        f'<section class="card"><h1>{escape(texts["errors_title"])}</h1>\n'
        f'<p class="form-error" role="alert">{escape(texts["errors_lead"])}</p>\n'
        f'<form method="post" action="{escape(action)}" class="form-again" novalidate>\n'
        f'<input type="hidden" name="lang" value="{escape(language)}">\n'
        + "\n".join(rows)
        + f"\n{ending}\n</form>\n{_back_link(texts, back)}</section>"
    )
    return page(language, texts["errors_title"], content)


def refused_page(texts: Mapping[str, str], language: str, code: str, back: str | None) -> str:
    """A refusal that is not about one field (origin, CAPTCHA, rate limit, unknown form...)."""
    message = texts.get(f"error_{code}") or texts["error_other"]
    content = (
        f'<section class="card"><h1>{escape(texts["refused_title"])}</h1>\n'
        f'<p class="form-error" role="alert">{escape(message)}</p>\n{_back_link(texts, back)}</section>'
    )
    return page(language, texts["refused_title"], content)


def problem_text(texts: Mapping[str, str], problem: Problem) -> str:
    """A field problem in the page's language (the owner's numbers filled in literally)."""
    template = texts.get(f"field_{problem.code}")
    if template is None:
        return problem.message
    return render(template, {"max": str(problem.max)})


def safe_back(referer: str | None) -> str | None:
    """The page the post came from, if it is an http(s) URL: the way back to the form."""
    if not referer or not referer.isprintable():
        return None
    parts = urlsplit(referer)
    return referer if parts.scheme in ("http", "https") and parts.netloc else None


def _field_row(
    texts: Mapping[str, str],
    name: str,
    posted: Mapping[str, object],
    problem: Problem | None,
    multiline: bool,
) -> str:
    value = posted.get(name, "")
    typed = escape(value if isinstance(value, str) else "")
    ident = escape(f"field-{name}")
    described = f' aria-describedby="{ident}-error" aria-invalid="true"' if problem else ""
    if multiline:
        control = f'<textarea id="{ident}" name="{escape(name)}"{described}>{typed}</textarea>'
    else:
        control = f'<input id="{ident}" name="{escape(name)}" value="{typed}"{described}>'
    error = ""
    if problem is not None:
        error = f'<p class="field-error" id="{ident}-error">{escape(problem_text(texts, problem))}</p>'
    return f'<div class="field"><label for="{ident}">{escape(name)}</label>{control}{error}</div>'


def _back_link(texts: Mapping[str, str], back: str | None) -> str:
    return f'<p><a href="{escape(back)}">{escape(texts["back"])}</a></p>' if back else ""
