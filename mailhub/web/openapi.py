"""The OpenAPI 3.0.3 spec, built from the marshmallow schemas, and Swagger UI at /docs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from swagger_ui_bundle import swagger_ui_path

from mailhub import __version__
from mailhub.forms.definitions import FormDefinition
from mailhub.web import admin_openapi, appkeys, schemas
from mailhub.web.openapi_forms import add_form_paths
from mailhub.web.openapi_parts import (
    EVENTS_OPERATION,
    IDEMPOTENCY_KEY,
    RESULT_OPERATION,
    error_answer,
    json_answer,
    queued_answer,
)

SWAGGER_STATIC = "/docs/static"

_DOCS_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mailhub API</title>
<link rel="stylesheet" href="{SWAGGER_STATIC}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{SWAGGER_STATIC}/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>"""
#: A file, not an inline script, so the page's Content-Security-Policy can refuse
#: inline scripts. No validator badge: it would load an image from swagger.io.
_DOCS_INIT = 'SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null});\n'


_TASK_ID_PARAM = {
    "name": "task_id",
    "in": "query",
    "required": True,
    "schema": {"type": "string", "format": "uuid", "maxLength": schemas.MAX_TASK_ID},
}
#: One event of the SSE stream, as its fields are parsed (the schema of each event).
_SSE_EVENT = {
    "type": "object",
    "required": ["data", "id"],
    "properties": {
        "data": {"type": "string", "description": "A Result document, as JSON."},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The document's `seq`."},
        "event": {"type": "string", "enum": ["message"]},
    },
}
#: What `streams.task_events_ws` needs to switch protocols (RFC 6455), as header parameters.
_WEBSOCKET_HANDSHAKE = [
    {
        "name": "Upgrade",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "enum": ["websocket"]},
    },
    {
        "name": "Connection",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "enum": ["Upgrade"]},
    },
    {
        "name": "Sec-WebSocket-Version",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "enum": ["13"]},
    },
    {
        "name": "Sec-WebSocket-Key",
        "in": "header",
        "required": True,
        "description": "16 random bytes, base64.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"},
    },
]


def build_spec(forms: Mapping[str, FormDefinition] | None = None) -> dict[str, Any]:
    """The spec of every path; `forms` (the settings' forms) each get a path of their own."""
    spec = APISpec(
        title="mailhub",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Queue emails over HTTP; follow their delivery."},
    )
    for name, schema in [
        ("EmailRequest", schemas.EmailRequestSchema),
        ("Queued", schemas.QueuedSchema),
        ("Result", schemas.ResultSchema),
        ("Error", schemas.ErrorSchema),
    ]:
        spec.components.schema(name, schema=schema)
    spec.path(
        path="/api/v1/email/received",
        operations={
            "post": {
                "operationId": "submitEmail",
                "summary": "Queue an email",
                "description": "Answers at once with a task id; a worker delivers the mail.",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/EmailRequest"}}
                    },
                },
                "responses": {
                    "200": queued_answer("Queued; follow it with result_url, SSE or WebSocket"),
                    "409": error_answer("Idempotency-Key reused with another body"),
                    "400": error_answer("Not JSON or not UTF-8"),
                    "413": error_answer("Request too large"),
                    "415": error_answer("Not application/json"),
                    "422": error_answer("Invalid fields"),
                    "503": error_answer("Queue unavailable"),
                },
            }
        },
    )
    spec.path(
        path="/api/v1/email/result",
        operations={
            "get": {
                "operationId": RESULT_OPERATION,
                "summary": "A task's result",
                "parameters": [_TASK_ID_PARAM],
                "responses": {
                    "200": json_answer("Result", "pending, success or failed"),
                    "404": error_answer("Unknown or expired task id"),
                    "422": error_answer("Missing or malformed task id"),
                    "503": error_answer("Queue unavailable"),
                },
            }
        },
    )
    _add_live_paths(spec)
    add_form_paths(spec, forms or {})
    admin_openapi.add_paths(spec)
    return spec.to_dict()


def _add_live_paths(spec: APISpec) -> None:
    """The SSE and WebSocket endpoints (OpenAPI can only describe their handshake)."""
    spec.path(
        path="/api/v1/email/events",
        operations={
            "get": {
                "operationId": EVENTS_OPERATION,
                "summary": "Follow a task live (Server-Sent Events)",
                "description": (
                    "Sends the task's current result document, then one event per transition, "
                    "until `success` or `failed`, then closes. Each event's `data` is a Result "
                    "document and its `id` is the document's `seq`; a reconnect with "
                    "`Last-Event-ID` resumes after it. Comments (`: ping`) keep idle streams open."
                ),
                "parameters": [
                    _TASK_ID_PARAM,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Skip events up to this seq (a number, as the `id:` lines "
                        "give it); any other value is ignored.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "An event stream of Result documents",
                        "content": {
                            "text/event-stream": {
                                "schema": _SSE_EVENT,
                                "example": 'id: 1\ndata: {"seq": 1, ...}\n\n',
                            }
                        },
                    },
                    "204": {"description": "Last-Event-ID already covers the final state: nothing more"},
                    "404": error_answer("Unknown or expired task id"),
                    "422": error_answer("Missing or malformed task id"),
                    "503": error_answer("Queue unavailable"),
                },
            }
        },
    )
    spec.path(
        path="/api/v1/email/ws",
        operations={
            "get": {
                "summary": "Follow tasks live (WebSocket)",
                "description": (
                    'Send `{"subscribe": "<task_id>"}` (several per connection) and '
                    '`{"unsubscribe": "<task_id>"}` as text messages. The server sends each '
                    "followed task's current Result document, then one per transition until a "
                    'final one. Mistakes are answered with `{"error": {"code", "message", '
                    '"task_id"?}}` and the connection stays open.'
                ),
                "parameters": _WEBSOCKET_HANDSHAKE,
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol"},
                    "400": error_answer("Not a WebSocket handshake"),
                },
            }
        },
    )
    spec.path(
        path="/api/v1/demo-config",
        operations={
            "get": {
                "summary": "Settings of the bundled demo form",
                "responses": {
                    "200": {
                        "description": "`recipient` to prefill; `inbox_url` in capture mode",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    )


def setup(app: web.Application) -> None:
    spec = build_spec(app[appkeys.SETTINGS].forms)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(spec)

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=_DOCS_PAGE, content_type="text/html")

    async def docs_init(request: web.Request) -> web.Response:
        return web.Response(text=_DOCS_INIT, content_type="text/javascript")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
    app.router.add_get("/docs/init.js", docs_init)
    app.router.add_static(SWAGGER_STATIC, str(swagger_ui_path))
