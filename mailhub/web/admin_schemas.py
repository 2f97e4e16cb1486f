"""Marshmallow schemas of the admin API: its queries and bodies, and its answers (for OpenAPI)."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

from mailhub.web.schemas import ResultSchema, Text, header_safe

STATUSES = ["pending", "success", "failed"]
MAX_PAGE = 200
MAX_BULK = 10_000
MAX_ADDRESS = 254


def address_like(value: str) -> None:
    """An address to look up: not necessarily deliverable, but one line with an @."""
    header_safe(value)
    if "@" not in value:
        raise ValidationError("Not an email address.")


class TaskListQuerySchema(Schema):
    """The query of `GET /api/v1/admin/tasks`."""

    status = fields.String(validate=validate.OneOf(STATUSES))
    to = Text(
        validate=[validate.Length(min=3, max=MAX_ADDRESS), address_like],
        metadata={"description": "Tasks to (or with Reply-To) this address."},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE))
    cursor = Text(
        validate=validate.Length(max=64),
        metadata={"description": "`next_cursor` of the previous page."},
    )


class AddressPathSchema(Schema):
    """The address of `DELETE /api/v1/admin/recipients/{address}`."""

    address = Text(required=True, validate=[validate.Length(min=3, max=MAX_ADDRESS), address_like])


class BulkResendSchema(Schema):
    """The body of `POST /api/v1/admin/tasks/resend`."""

    status = fields.String(
        required=True,
        validate=validate.Equal("failed", error="Only failed tasks can be re-sent."),
        metadata={"enum": ["failed"]},
    )
    since = fields.AwareDateTime(
        metadata={"description": "Re-send tasks that failed at or after this time (ISO 8601 with offset)."}
    )
    limit = fields.Integer(
        load_default=1000,
        validate=validate.Range(min=1, max=MAX_BULK),
        metadata={"description": "Re-send at most this many (oldest failure first)."},
    )


class AdminTaskSchema(ResultSchema):
    """A task in the admin list: its result document and what only the owner sees."""

    subject = fields.String(required=True)
    created_at = fields.String(required=True, metadata={"description": "When it was accepted."})
    message_id = fields.String(required=True)
    resends = fields.Integer(required=True, metadata={"description": "Times the owner re-sent it."})
    detail = fields.String(metadata={"description": "The full text of the last error."})


class TimelineEntrySchema(Schema):
    seq = fields.Integer(required=True)
    event = fields.String(required=True)
    at = fields.String(required=True)
    attempts = fields.Integer(required=True)
    detail = fields.String(metadata={"description": "The error (retry and failed)."})


class AdminTaskDetailSchema(AdminTaskSchema):
    """One task in full: its request and its timeline."""

    body = fields.String()
    username = fields.String()
    reply_to = fields.String()
    from_name = fields.String()
    html = fields.Boolean(metadata={"description": "Whether it has an HTML part."})
    delivered_at = fields.String()
    timeline = fields.List(
        fields.Nested(TimelineEntrySchema),
        required=True,
        metadata={"description": "Every transition; a very long one keeps its first and latest."},
    )


class TaskPageSchema(Schema):
    tasks = fields.List(fields.Nested(AdminTaskSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


class BulkResendAnswerSchema(Schema):
    requeued = fields.Integer(required=True)
    remaining = fields.Integer(required=True, metadata={"description": "Still failed since then."})


class ErasedSchema(Schema):
    deleted = fields.Integer(required=True, metadata={"description": "Tasks deleted."})


class TicketSchema(Schema):
    ticket = fields.String(required=True)
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds it stays valid."})


class QueueSchema(Schema):
    waiting = fields.Integer(required=True, metadata={"description": "On the queue, not yet claimed."})
    in_flight = fields.Integer(required=True, metadata={"description": "Claimed by a worker."})
    retries_waiting = fields.Integer(required=True)
    next_retry_at = fields.String(allow_none=True, required=True)
    pending = fields.Integer(required=True)
    oldest_pending_seconds = fields.Float(
        allow_none=True, required=True, metadata={"description": "Since it was accepted or re-sent."}
    )


class CountsSchema(Schema):
    pending = fields.Integer(required=True)
    success = fields.Integer(required=True)
    failed = fields.Integer(required=True)


class TaskCountsSchema(Schema):
    total = fields.Nested(CountsSchema, required=True)
    last_hour = fields.Nested(CountsSchema, required=True)
    last_day = fields.Nested(CountsSchema, required=True)


class PerMinuteSchema(Schema):
    start = fields.String(required=True, metadata={"description": "The first minute."})
    success = fields.List(fields.Integer(), required=True)
    failed = fields.List(fields.Integer(), required=True)


class WorkerSchema(Schema):
    name = fields.String(required=True)
    holding = fields.Integer(required=True, metadata={"description": "Mails it holds."})
    idle_seconds = fields.Float(required=True, metadata={"description": "Since it last read the queue."})


class SendingSchema(Schema):
    paused = fields.Boolean(required=True)
    reason = fields.String(required=True)
    checked_at = fields.String(allow_none=True, required=True)
    capture_mode = fields.Boolean(required=True)


def _moment(description: str) -> fields.String:
    return fields.String(allow_none=True, required=True, metadata={"description": description})


class WebhookCountsSchema(Schema):
    pending = fields.Integer(required=True, metadata={"description": "Waiting (or being POSTed)."})
    delivered = fields.Integer(required=True)
    failed_attempts = fields.Integer(required=True, metadata={"description": "POSTs that failed."})
    dropped = fields.Integer(required=True, metadata={"description": "Given up (WEBHOOK_MAX_AGE, 410)."})
    last_success_at = _moment("The last 2xx answer.")
    last_failure_at = _moment("The last failed POST.")
    last_error = fields.String(allow_none=True, required=True)


class WebhookEndpointSchema(WebhookCountsSchema):
    url = fields.String(required=True, metadata={"description": "Without credentials or query."})
    last_status = fields.String(allow_none=True, required=True, metadata={"description": "HTTP status."})


class WebhooksSchema(WebhookCountsSchema):
    configured = fields.Boolean(required=True, metadata={"description": "WEBHOOK_URL is set."})
    next_attempt_at = _moment("When the next waiting delivery is due.")
    endpoints = fields.List(fields.Nested(WebhookEndpointSchema), required=True)


class AlertsSchema(Schema):
    email = fields.String(required=True, metadata={"description": "ALERT_EMAIL."})
    notices_waiting = fields.Integer(
        required=True, metadata={"description": "Pauses and resumes whose mail is not queued yet."}
    )
    failures_waiting = fields.Integer(required=True, metadata={"description": "For the next digest."})
    last_digest_at = _moment("When the last digest was queued.")
    next_digest_in = fields.Float(required=True, metadata={"description": "Seconds until one may go."})


class OverviewSchema(Schema):
    now = fields.String(required=True)
    queue = fields.Nested(QueueSchema, required=True)
    tasks = fields.Nested(TaskCountsSchema, required=True)
    per_minute = fields.Nested(PerMinuteSchema, required=True)
    workers = fields.List(fields.Nested(WorkerSchema), required=True)
    sending = fields.Nested(SendingSchema, required=True)
    webhooks = fields.Nested(WebhooksSchema, required=True)
    alerts = fields.Nested(
        AlertsSchema, allow_none=True, required=True, metadata={"description": "Null without ALERT_EMAIL."}
    )
