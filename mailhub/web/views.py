"""The JSON API: submit an email, read its result."""

from __future__ import annotations

import json
import logging
import uuid

from aiohttp import web
from marshmallow import ValidationError

from mailhub import metrics
from mailhub.errors import ApiError, InvalidRequest, TaskNotFound, ValidationFailed
from mailhub.store.tasks import EmailRequest
from mailhub.web import appkeys
from mailhub.web.schemas import EmailRequestSchema, TaskQuerySchema

RESULT_PATH = "/api/v1/email/result"
MAX_IDEMPOTENCY_KEY = 255

logger = logging.getLogger(__name__)

_request_schema = EmailRequestSchema()
_query_schema = TaskQuerySchema()


async def read_json(request: web.Request) -> object:
    """The request's JSON body, or an `ApiError` saying what is wrong with it."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="Send the body as Content-Type: application/json.")
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("The body is not valid UTF-8.") from None
    except (ValueError, RecursionError):
        raise InvalidRequest("The body is not valid JSON.") from None


def validated(schema, data: object) -> dict:  # type: ignore[no-untyped-def]
    try:
        return schema.load(data)
    except ValidationError as exc:
        messages = exc.normalized_messages()
        fields = {name: _flatten(msg) for name, msg in messages.items()}
        raise ValidationFailed("Some fields are invalid.", fields) from None


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
    client = guard.client_address(request.remote, request.headers)
    quota = guard.quota(client)
    # Every submit counts against the client's rate limit (wrong API keys too,
    # so keys cannot be guessed at speed), and over it the answer is 429
    # whatever else is wrong. The enqueue script counts the submits that reach
    # it in the same round trip; the others are counted here, before their own
    # refusal is raised.
    try:
        guard.check_api_key(request.headers)
        submission = await _read_submission(request)
    except Exception:
        await guard.count(quota)
        raise
    if submission is None:
        await guard.count(quota)
        logger.warning("honeypot filled by %s: dropped quietly", client)
        return str(uuid.uuid4()), "honeypot"
    data, key = submission
    queued = await request.app[appkeys.STORE].accept(EmailRequest(**data), key, quota)
    if not queued.created:
        logger.info("task %s: repeated submit (same Idempotency-Key and body)", queued.task_id)
        return queued.task_id, "duplicate"
    logger.info("task %s: queued for %s", queued.task_id, data["to"])
    return queued.task_id, "accepted"


async def _read_submission(request: web.Request) -> tuple[dict, str | None] | None:
    """The valid mail and its Idempotency-Key, None for a filled honeypot, or an error."""
    guard = request.app[appkeys.GUARD]
    payload = await read_json(request)
    if guard.is_spam(payload):
        return None
    data = validated(_request_schema, guard.strip_honeypot(payload))
    guard.check_recipient(data["to"])
    return data, idempotency_key(request)


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
    query = validated(_query_schema, {k: v for k, v in request.query.items() if k == "task_id"})
    return str(uuid.UUID(query["task_id"]))


async def result(request: web.Request) -> web.Response:
    """The task's current result document."""
    task_id = task_id_from_query(request)
    document = await request.app[appkeys.STORE].result(task_id)
    if document is None:
        raise TaskNotFound(f"No task {task_id}: it never existed or its result expired.")
    return web.Response(text=document, content_type="application/json")
