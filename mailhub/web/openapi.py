"""The OpenAPI 3.0.3 spec, built from the marshmallow schemas, and Swagger UI at /docs."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from swagger_ui_bundle import swagger_ui_path

from mailhub import __version__
from mailhub.web import admin_openapi, schemas
from mailhub.web.openapi_parts import error_answer, json_answer

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


def build_spec() -> dict[str, Any]:
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
                "summary": "Queue an email",
                "description": "Answers at once with a task id; a worker delivers the mail.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/EmailRequest"}}
                    },
                },
                "responses": {
                    "200": json_answer("Queued", "Queued"),
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
                "summary": "A task's result",
                "parameters": [
                    {
                        "name": "task_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid", "maxLength": schemas.MAX_TASK_ID},
                    }
                ],
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
    _add_form_paths(spec)
    admin_openapi.add_paths(spec)
    return spec.to_dict()


_TASK_ID_PARAM = {
    "name": "task_id",
    "in": "query",
    "required": True,
    "schema": {"type": "string", "format": "uuid", "maxLength": schemas.MAX_TASK_ID},
}


def _add_live_paths(spec: APISpec) -> None:
    """The SSE and WebSocket endpoints (OpenAPI can only describe their handshake)."""
    spec.path(
        path="/api/v1/email/events",
        operations={
            "get": {
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
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Skip events up to this seq.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "An event stream of Result documents",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
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


_FORM_FIELDS = {
    "type": "object",
    "additionalProperties": True,
    "description": (
        "The form's declared fields by name (other names are dropped), plus the CAPTCHA "
        "widget's token (`cf-turnstile-response`, `h-captcha-response` or "
        "`g-recaptcha-response`) and optionally `lang` (`en`, `ko`) for the pages."
    ),
    "example": {"name": "Kim", "email": "kim@example.org", "message": "Hello!"},
}


def _add_form_paths(spec: APISpec) -> None:
    """`POST /api/v1/forms/{form_id}`: the forms the owner defined in FORMS_FILE."""
    spec.tag(
        {
            "name": "forms",
            "description": "Forms defined on the server (FORMS_FILE): the page sends only field "
            "values; recipients and wording are the owner's.",
        }
    )
    spec.path(
        path="/api/v1/forms/{form_id}",
        operations={
            "post": {
                "tags": ["forms"],
                "summary": "Post a form",
                "description": (
                    "Takes JSON, urlencoded or multipart (text fields only) bodies. A request whose "
                    "`Accept` prefers `text/html` (a browser's plain post) gets `303 See Other` to the "
                    "form's `redirect` or the built-in thank-you page, and its refusals as HTML pages; "
                    "every other request gets these JSON answers. `Idempotency-Key` works as on "
                    "`/api/v1/email/received`."
                ),
                "parameters": [
                    {
                        "name": "form_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "example": "contact"},
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        media: {"schema": _FORM_FIELDS}
                        for media in (
                            "application/json",
                            "application/x-www-form-urlencoded",
                            "multipart/form-data",
                        )
                    },
                },
                "responses": {
                    "200": json_answer("Queued", "Queued; follow it with result_url, SSE or WebSocket"),
                    "303": {"description": "A plain HTML post: to the form's redirect or /forms/thanks"},
                    "400": error_answer("Not JSON, not UTF-8, or not an object"),
                    "403": error_answer(
                        "origin_not_allowed, or the CAPTCHA: captcha_missing, captcha_invalid "
                        "(bad, expired or reused), captcha_unverifiable"
                    ),
                    "404": error_answer("form_not_found"),
                    "409": error_answer("Idempotency-Key reused with another body"),
                    "413": error_answer("Request too large, or too many fields"),
                    "415": error_answer("Not JSON, urlencoded or multipart"),
                    "422": error_answer("Invalid fields: `fields` and `field_codes` say which and why"),
                    "429": error_answer("Too many posts from this client"),
                    "503": error_answer("Queue unavailable"),
                },
            }
        },
    )


def setup(app: web.Application) -> None:
    spec = build_spec()

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
