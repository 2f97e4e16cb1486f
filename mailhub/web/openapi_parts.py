"""What every OpenAPI path is written with: a JSON answer of a schema, the error answer, and
the submit doors' shared parts (their answer, linked to the operations that follow a task)."""

from __future__ import annotations

from typing import Any


def json_answer(schema: str, description: str) -> dict[str, Any]:
    """An answer whose body is the named component schema, as JSON."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def error_answer(description: str) -> dict[str, Any]:
    """An answer with the `{"error": {...}}` body of every refusal."""
    return json_answer("Error", description)


#: Operations that follow a task, by the `task_id` a submit answers with (OpenAPI links,
#: which schemathesis's stateful phase follows).
RESULT_OPERATION, EVENTS_OPERATION = "getResult", "followEvents"
_TASK_LINKS = {
    "result": {
        "operationId": RESULT_OPERATION,
        "parameters": {"task_id": "$response.body#/task_id"},
        "description": "Poll the queued task's result.",
    },
    "events": {
        "operationId": EVENTS_OPERATION,
        "parameters": {"task_id": "$response.body#/task_id"},
        "description": "Follow the queued task live (Server-Sent Events).",
    },
}
#: The optional `Idempotency-Key` header of both submit doors, as `views.idempotency_key` takes it.
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key and body within 24 h answer the first task again; another body gets 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~](?:[ -~]*[!-~])?$"},
}


def queued_answer(description: str) -> dict[str, Any]:
    """A submit's 200: the `Queued` document, linked to the result and the live events of its task."""
    return {**json_answer("Queued", description), "links": _TASK_LINKS}
