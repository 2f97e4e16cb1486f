"""The JSON API: submit an email, read its result."""

from __future__ import annotations

import json
import logging
import re
import uuid

from aiohttp import web
from marshmallow import Schema, ValidationError

from mailhub import metrics
from mailhub.errors import ApiError, InvalidRequest, TaskNotFound, ValidationFailed
from mailhub.store.tasks import EmailRequest, IdempotencyKey
from mailhub.web import appkeys
from mailhub.web.schemas import EmailRequestSchema, TaskQuerySchema

RESULT_PATH = "/api/v1/email/result"
MAX_IDEMPOTENCY_KEY = 255

logger = logging.getLogger(__name__)

_request_schema = EmailRequestSchema()
_query_schema = TaskQuerySchema()
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def require_json(request: web.Request) -> None:
    """Refuse (415) a body that is not declared JSON."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="Send the body as Content-Type: application/json.")


async def read_json(request: web.Request) -> object:
    """The request's JSON body, or an error saying what is wrong with it."""
    require_json(request)
    raw = await request.read()
    # Raised outside the `except` blocks: the decoder's errors keep the whole text.
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "The body is not valid UTF-8."
    except (ValueError, RecursionError):
        problem = "The body is not valid JSON."
    raise InvalidRequest(problem)


def validated(schema: Schema, data: object) -> dict:
    """The loaded data, or `ValidationFailed` with a message per invalid field.

    The refused data may be half a megabyte: nothing that outlives the refusal
    refers to it. marshmallow's error holds the data and sits in a reference
    cycle with its traceback (the frame that raised it names it), which only
    the cyclic garbage collector would free; so the error's data and traceback
    are dropped here, and our error is raised outside the `except` block, so
    it does not carry marshmallow's as its context.
    """
    try:
        return schema.load(data)  # type: ignore[arg-type]  # any JSON value: marshmallow refuses a non-object
    except ValidationError as exc:
        fields = {name: _flatten(msg) for name, msg in exc.normalized_messages().items()}
        exc.data = exc.valid_data = None
        exc.__traceback__ = None
    raise ValidationFailed("Some fields are invalid.", fields)


def _flatten(message: object) -> list[str]:
    if isinstance(message, list):
        return [str(m) for m in message]
    if isinstance(message, dict):
        return [f"{key}: {text}" for key, value in message.items() for text in _flatten(value)]
    return [str(message)]


async def submit(request: web.Request) -> web.Response:
    """Queue an email; answer at once with its task id."""
    try:
        task_id, outcome = await _admit(request)
    except ApiError as refusal:
        metrics.SUBMISSIONS.labels(refusal.code).inc()
        raise
    metrics.SUBMISSIONS.labels(outcome).inc()
    return _queued(task_id)


async def _admit(request: web.Request) -> tuple[str, str]:
    guard = request.app[appkeys.GUARD]
    client = guard.client(request.remote, request.headers)
    # Only a submit that could have queued a mail counts against the client's
    # rate limit. Without a CORS preflight another origin's page can send only
    # text/plain, form or multipart bodies: refused here for their content
    # type, they weigh nothing, so such a page cannot lock its visitor out.
    # From there on every refusal counts, a wrong API key too (keys cannot be
    # guessed at speed), and over the limit the answer is 429 whatever else is
    # wrong. The enqueue script counts the submits that reach it.
    require_json(request)
    quota = guard.quota(client)
    try:
        api_key = guard.check_api_key(request.headers)
        mail, spam = await _read_mail(request)
        key = idempotency_key(request)
    except Exception:
        await guard.count(quota)
        raise
    idempotency = IdempotencyKey(guard.idempotency_scope(client, api_key), key) if key else None
    queued = await request.app[appkeys.STORE].accept(EmailRequest(**mail), idempotency, quota, decoy=spam)
    if spam:
        logger.warning(
            "task %s: honeypot filled by %s: a decoy, nothing is sent", queued.task_id, client.address
        )
        return queued.task_id, "honeypot"
    if not queued.created:
        logger.info("task %s: repeated submit (same Idempotency-Key and body)", queued.task_id)
        return queued.task_id, "duplicate"
    logger.info("task %s: queued for %s", queued.task_id, mail["to"])
    return queued.task_id, "accepted"


async def _read_mail(request: web.Request) -> tuple[dict, bool]:
    """The valid mail, and whether its honeypot field was filled in; or an error.

    A filled honeypot is checked like any mail, so a bot learns nothing from the answer.
    """
    guard = request.app[appkeys.GUARD]
    payload = await read_json(request)
    spam = guard.is_spam(payload)
    data = validated(_request_schema, guard.strip_honeypot(payload))
    guard.check_recipient(data["to"])
    return data, spam


def _queued(task_id: str) -> web.Response:
    return web.json_response(
        {"task_id": task_id, "status": "queued", "result_url": f"{RESULT_PATH}?task_id={task_id}"}
    )


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise InvalidRequest(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters.")
    return key


def task_id_from_query(request: web.Request) -> str:
    """The `task_id` query parameter as a canonical UUID, or `ValidationFailed`."""
    given = request.query.get("task_id", "")
    if _CANONICAL_UUID.fullmatch(given):  # as every task id mailhub hands out: polls skip the schema
        return given
    query = validated(_query_schema, {k: v for k, v in request.query.items() if k == "task_id"})
    return str(uuid.UUID(query["task_id"]))


async def result(request: web.Request) -> web.Response:
    """The task's current result document."""
    task_id = task_id_from_query(request)
    document = await request.app[appkeys.STORE].result(task_id)
    if document is None:
        raise TaskNotFound(f"No task {task_id}: it never existed or its result expired.")
    return web.Response(text=document, content_type="application/json")
