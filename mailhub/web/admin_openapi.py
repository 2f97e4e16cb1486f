"""The admin API in the OpenAPI document: its own tag, behind the bearer scheme."""

from __future__ import annotations

from typing import Any

from apispec import APISpec

from mailhub.web import admin_schemas as s
from mailhub.web.admin_auth import API_PREFIX, TICKET_SECONDS
from mailhub.web.openapi_parts import error_answer, json_answer

TAG = "admin"
SCHEME = "adminToken"
_SCHEMAS = {
    "AdminTask": s.AdminTaskSchema,
    "AdminTaskDetail": s.AdminTaskDetailSchema,
    "TaskPage": s.TaskPageSchema,
    "BulkResend": s.BulkResendSchema,
    "BulkResendAnswer": s.BulkResendAnswerSchema,
    "Erased": s.ErasedSchema,
    "Overview": s.OverviewSchema,
    "Ticket": s.TicketSchema,
}
#: One event of the admin stream, as SSE readers (and schemathesis) take it apart.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["message", "ready", "deleted", "resync"]},
        "data": {"type": "string", "description": "JSON: a Result document, a deletion notice, or {}"},
    },
    "required": ["data"],
}
_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def _operation(summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An admin operation: tagged, behind the token, with the answers every one of them may give."""
    return {
        "tags": [TAG],
        "summary": summary,
        "security": [{SCHEME: []}],
        "responses": {
            **responses,
            "401": error_answer("Missing or wrong admin token"),
            "404": error_answer("Unknown task, or the admin API is off (no ADMIN_TOKEN)"),
            "503": error_answer("Redis unavailable"),
        },
        **more,
    }


def add_paths(spec: APISpec) -> None:
    """Register the admin schemas, the bearer scheme, the tag and every admin path."""
    for name, schema in _SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme(
        SCHEME,
        {
            "type": "http",
            "scheme": "bearer",
            "description": "ADMIN_TOKEN. Without it set, the admin API does not exist (404), "
            "except in capture mode on a loopback address, where it is open.",
        },
    )
    spec.tag({"name": TAG, "description": "The owner's view: list, re-send, delete, erase, overview."})
    _task_paths(spec)
    _resend_paths(spec)
    _other_paths(spec)
    _event_paths(spec)


def _task_paths(spec: APISpec) -> None:
    spec.path(
        path=API_PREFIX + "/tasks",
        operations={
            "get": _operation(
                "List tasks, newest first",
                {"200": json_answer("TaskPage", "A page of tasks"), "422": error_answer("Invalid query")},
                description="Newest first by when each task entered its status. Pass `next_cursor` "
                "back as `cursor` for the next page.",
                parameters=[{"in": "query", "schema": s.TaskListQuerySchema}],
            )
        },
    )
    spec.path(
        path=API_PREFIX + "/tasks/{task_id}",
        operations={
            "get": _operation(
                "One task in full, with its timeline",
                {"200": json_answer("AdminTaskDetail", "The task"), "422": error_answer("Malformed task id")},
                parameters=[_TASK_ID],
            ),
            "delete": _operation(
                "Delete a task and every trace of it",
                {
                    "204": {"description": "Deleted: result and events answer 404 from now on"},
                    "422": error_answer("Malformed task id"),
                },
                description="Removes the task's hash, index entries, queue entry or retry, its "
                "Idempotency-Key record and the dev inbox's copy. A send already in flight "
                "is not recalled.",
                parameters=[_TASK_ID],
            ),
        },
    )


def _resend_paths(spec: APISpec) -> None:
    spec.path(
        path=API_PREFIX + "/tasks/{task_id}/resend",
        operations={
            "post": _operation(
                "Re-send a failed task",
                {
                    "200": json_answer("Result", "Queued again (event `requeued`)"),
                    "409": error_answer("Not failed"),
                    "422": error_answer("Malformed task id"),
                },
                description="A fresh attempt budget, the same Message-ID; its events go on.",
                parameters=[_TASK_ID],
            )
        },
    )
    spec.path(
        path=API_PREFIX + "/tasks/resend",
        operations={
            "post": _operation(
                "Re-send failed tasks in bulk",
                {
                    "200": json_answer("BulkResendAnswer", "How many"),
                    "400": error_answer("Not JSON or not UTF-8"),
                    "415": error_answer("Not application/json"),
                    "422": error_answer("Invalid body"),
                },
                description="Oldest failure first, at most `limit` per call; call again while "
                "`remaining` is above 0.",
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BulkResend"}}},
                },
            )
        },
    )


def _other_paths(spec: APISpec) -> None:
    spec.path(
        path=API_PREFIX + "/recipients/{address}",
        operations={
            "delete": _operation(
                "Erase an address: delete every task to it (or with it as Reply-To)",
                {
                    "200": json_answer("Erased", "How many tasks were deleted"),
                    "422": error_answer("Not an address"),
                },
                description="Also drops the dev inbox's mails that mention the address.",
                parameters=[
                    {"name": "address", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
    )
    spec.path(
        path=API_PREFIX + "/overview",
        operations={
            "get": _operation(
                "Queue, outcomes, workers, sending, webhooks, alerts",
                {"200": json_answer("Overview", "Now")},
                description="`webhooks`: deliveries waiting, delivered, failed attempts and dropped, "
                "the last success and failure, per URL too; `alerts` (with ALERT_EMAIL): alert "
                "mails not yet queued, failures waiting for the next digest, the last digest.",
            )
        },
    )


def _event_paths(spec: APISpec) -> None:
    spec.path(
        path=API_PREFIX + "/events/ticket",
        operations={
            "post": _operation(
                "A ticket for the event stream",
                {"200": json_answer("Ticket", f"Valid {TICKET_SECONDS} s")},
                description="EventSource cannot send headers: open `/api/v1/admin/events?ticket=...` "
                "with it instead of the token.",
            )
        },
    )
    spec.path(
        path=API_PREFIX + "/events",
        operations={
            "get": _operation(
                "Every task's transitions, live (Server-Sent Events)",
                {
                    "200": {
                        "description": "`event: ready` once listening (load the list now); then each "
                        "transition's Result document as `data`; `event: deleted` for a deleted task; "
                        "`event: resync` when events may have been missed (reload the list)",
                        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                    }
                },
                parameters=[
                    {
                        "name": "ticket",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "From `POST /api/v1/admin/events/ticket`, instead of the token.",
                    }
                ],
            )
        },
    )
