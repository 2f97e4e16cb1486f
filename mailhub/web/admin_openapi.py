"""The admin API in the OpenAPI document: its own tag, behind the bearer scheme."""

from __future__ import annotations

from typing import Any

from apispec import APISpec

from mailhub.web import admin_schemas as s
from mailhub.web.admin_auth import API_PREFIX

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
}
_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


def _operation(summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An admin operation: tagged, behind the token, with the answers every one of them may give."""
    return {
        "tags": [TAG],
        "summary": summary,
        "security": [{SCHEME: []}],
        "responses": {
            **responses,
            "401": _error("Missing or wrong admin token"),
            "404": _error("Unknown task, or the admin API is off (no ADMIN_TOKEN)"),
            "503": _error("Redis unavailable"),
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
    _other_paths(spec)


def _task_paths(spec: APISpec) -> None:
    spec.path(
        path=API_PREFIX + "/tasks",
        operations={
            "get": _operation(
                "List tasks, newest first",
                {"200": _json("TaskPage", "A page of tasks"), "422": _error("Invalid query")},
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
                {"200": _json("AdminTaskDetail", "The task"), "422": _error("Malformed task id")},
                parameters=[_TASK_ID],
            ),
            "delete": _operation(
                "Delete a task and every trace of it",
                {
                    "204": {"description": "Deleted: result and events answer 404 from now on"},
                    "422": _error("Malformed task id"),
                },
                description="Removes the task's hash, index entries, queue entry or retry, its "
                "Idempotency-Key record and the dev inbox's copy. A send already in flight "
                "is not recalled.",
                parameters=[_TASK_ID],
            ),
        },
    )
    spec.path(
        path=API_PREFIX + "/tasks/{task_id}/resend",
        operations={
            "post": _operation(
                "Re-send a failed task",
                {
                    "200": _json("Result", "Queued again (event `requeued`)"),
                    "409": _error("Not failed"),
                    "422": _error("Malformed task id"),
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
                    "200": _json("BulkResendAnswer", "How many"),
                    "400": _error("Not JSON or not UTF-8"),
                    "415": _error("Not application/json"),
                    "422": _error("Invalid body"),
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
                {"200": _json("Erased", "How many tasks were deleted"), "422": _error("Not an address")},
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
                {"200": _json("Overview", "Now")},
                description="`webhooks`: deliveries waiting, delivered, failed attempts and dropped, "
                "the last success and failure, per URL too; `alerts` (with ALERT_EMAIL): alert "
                "mails not yet queued, failures waiting for the next digest, the last digest.",
            )
        },
    )
