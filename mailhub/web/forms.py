"""`POST /api/v1/forms/{form_id}`: a server-side form, posted by a plain page or by JavaScript.

The same endpoint takes urlencoded, multipart (fields only) and JSON bodies.
A request that prefers HTML (a browser's plain form post) gets `303 See
Other` to the form's `redirect` or the built-in thank-you page, and its
refusals as pages; anything else gets the contract's JSON shapes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mailhub import metrics
from mailhub.errors import ApiError, FormNotFound, InvalidRequest, TaskNotFound, TooLarge, ValidationFailed
from mailhub.forms.fields import FieldsInvalid, Problem
from mailhub.forms.intake import Outcome, Post, check_origin
from mailhub.store.tasks import IdempotencyKey
from mailhub.web import appkeys, form_pages, streams
from mailhub.web.views import RESULT_PATH, idempotency_key, read_json, task_id_from_query

ROUTE = "/api/v1/forms/{form_id}"
#: More posted names than this is not a form a person filled in.
MAX_POSTED_FIELDS = 100
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: The codes of refusals aiohttp raises itself (reading the body), as the JSON errors name them.
_HTTP_CODES = {400: "bad_request", 413: "too_large", 415: "unsupported_media_type"}

logger = logging.getLogger(__name__)


class FileRefused(FieldsInvalid):
    """A multipart post carried a file: this round, forms take fields only."""


def wants_html(request: web.Request) -> bool:
    """True when the client prefers HTML to JSON: a browser's plain form post.

    Only an explicit text/html counts for HTML; */* counts for JSON, so
    fetch() and curl get JSON.
    """
    html_quality = json_quality = 0.0
    for item in request.headers.get("Accept", "").split(",")[:50]:
        media, _, params = item.strip().partition(";")
        quality = _quality(params)
        media = media.strip().lower()
        if media in ("text/html", "application/xhtml+xml"):
            html_quality = max(html_quality, quality)
        elif media in ("application/json", "application/*", "*/*"):
            json_quality = max(json_quality, quality)
    return html_quality > json_quality


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return max(0.0, min(1.0, float(value)))
            except ValueError:
                return 0.0
    return 1.0


async def read_values(request: web.Request) -> dict[str, object]:
    """Every posted name with its first value; files, oversized or odd bodies refused."""
    if request.content_type == "application/json":
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise InvalidRequest("Send the fields as one JSON object.")
        items = list(payload.items())
    elif request.content_type in _FORM_TYPES:
        items = await _read_form(request)
    else:
        raise web.HTTPUnsupportedMediaType(
            reason="Send the fields as a form (urlencoded or multipart) or as JSON."
        )
    if len(items) > MAX_POSTED_FIELDS:
        raise TooLarge(f"Too many fields: at most {MAX_POSTED_FIELDS}.")
    values: dict[str, object] = {}
    for name, value in items:
        values.setdefault(name, value)
    return values


async def _read_form(request: web.Request) -> list[tuple[str, object]]:
    try:
        # Bounded by the app's client_max_size (413 beyond it).
        data = await request.post()
    except UnicodeDecodeError:
        raise InvalidRequest("The form data is not valid UTF-8 text.") from None
    except (ValueError, LookupError, AssertionError, HttpProcessingError):
        # aiohttp's multipart reader refuses malformed parts with these (LookupError: a charset).
        raise InvalidRequest("The form data is malformed.") from None
    items: list[tuple[str, object]] = []
    for name, value in data.items():
        if isinstance(value, web.FileField):
            value.file.close()
            raise FileRefused({name: Problem("file", "Files are not accepted; send text fields only.")})
        items.append((name, value))
    return items


async def submit_form(request: web.Request) -> web.StreamResponse:
    """Queue a form's mail; answer 303 to a page, or the contract's JSON."""
    html_mode = wants_html(request)
    posted: dict[str, object] = {}
    try:
        outcome = await _take(request, posted)
    except ApiError as refusal:
        metrics.SUBMISSIONS.labels(refusal.code).inc()
        if not html_mode:
            raise
        return _refusal(request, refusal, posted)
    except web.HTTPException as exc:
        if not html_mode or exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        metrics.SUBMISSIONS.labels(code).inc()
        return _refusal(request, _StatusRefusal(exc.status, code, exc.reason), posted)
    metrics.SUBMISSIONS.labels(outcome.kind).inc()
    if html_mode:
        language = _requested_language(request, posted)
        location = outcome.form.redirect or form_pages.thanks_url(outcome.task_id, language)
        return web.Response(status=303, headers={"Location": location})
    return web.json_response(
        {
            "task_id": outcome.task_id,
            "status": "queued",
            "result_url": f"{RESULT_PATH}?task_id={outcome.task_id}",
        }
    )


async def _take(request: web.Request, posted: dict[str, object]) -> Outcome:
    """Read the post into `posted` (kept for a page of errors), then hand it to the intake."""
    guard = request.app[appkeys.GUARD]
    client = guard.client(request.remote, request.headers)
    form_id, origin, referer = (
        request.match_info["form_id"],
        request.headers.get("Origin"),
        request.headers.get("Referer"),
    )
    # Before the body is read, and weighing nothing against the rate limit: a
    # post to no form, or from a page outside the form's origins, which
    # another site's page can make its visitor's browser send.
    check_origin(request.app[appkeys.FORMS].form(form_id), origin, referer)
    quota = guard.quota(client)
    try:
        key = idempotency_key(request)
        posted.update(await read_values(request))
    except web.HTTPUnsupportedMediaType:
        raise  # weighs nothing: all another origin's page can send without a preflight (see guard.count)
    except (ApiError, web.HTTPException):
        await guard.count(quota)  # a post refused before the intake counts too
        raise
    post = Post(
        form_id=form_id,
        values=posted,
        client=client.address,
        client_group=client.group,
        origin=origin,
        referer=referer,
        idempotency_key=IdempotencyKey(guard.idempotency_scope(client, None), key) if key else None,
    )
    return await request.app[appkeys.FORMS].submit(post, quota)


class _StatusRefusal(ApiError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _refusal(request: web.Request, refusal: ApiError, posted: Mapping[str, object]) -> web.StreamResponse:
    """A refusal of a plain post: the form's `error_redirect`, or a page in the visitor's language."""
    intake = request.app[appkeys.FORMS]
    try:
        form = intake.form(request.match_info["form_id"])
    except FormNotFound:
        form = None
    if form is not None and form.error_redirect:
        location = _with_query(form.error_redirect, {"error": refusal.code})
        return web.Response(status=303, headers={"Location": location})
    locales = request.app[appkeys.LOCALES]
    language = locales.choose(_requested_language(request, posted), request.headers.get("Accept-Language"))
    texts = locales.texts(language)
    back = form_pages.safe_back(request.headers.get("Referer"))
    if form is not None and isinstance(refusal, FieldsInvalid):
        text = form_pages.errors_page(texts, language, form, posted, refusal.problems, back)
    else:
        text = form_pages.refused_page(texts, language, refusal.code, back)
    return web.Response(text=text, status=refusal.status, content_type="text/html", headers=refusal.headers)


def _requested_language(request: web.Request, posted: Mapping[str, object]) -> str | None:
    value = posted.get("lang") or request.query.get("lang")
    return value[:20] if isinstance(value, str) and value.isprintable() else None


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit(parts._replace(query=query))


async def thanks(request: web.Request) -> web.Response:
    """The built-in thank-you page: the task's status, followed live when JavaScript runs."""
    locales = request.app[appkeys.LOCALES]
    language = locales.choose(request.query.get("lang"), request.headers.get("Accept-Language"))
    try:
        task_id = task_id_from_query(request)
    except ValidationFailed:
        raise TaskNotFound("No such task.") from None
    raw = await request.app[appkeys.STORE].result(task_id)
    document = json.loads(raw) if raw else None
    text = form_pages.thanks_page(
        locales.texts(language),
        language,
        task_id,
        document,
        result_url=f"{RESULT_PATH}?task_id={task_id}",
        events_url=f"{streams.SSE_PATH}?task_id={task_id}",
    )
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})
