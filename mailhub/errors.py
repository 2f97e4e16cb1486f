"""The exceptions mailhub raises on purpose.

MailhubError
 ├── SettingsError          a setting is missing or invalid; start-up stops
 ├── ApiError               a request is refused; the web layer answers JSON
 │    ├── InvalidRequest    400: not JSON, not UTF-8, bad header
 │    ├── Unauthorized      401: API key missing or wrong
 │    ├── RecipientRefused  403: address outside ALLOWED_RECIPIENTS
 │    ├── OriginRefused     403: a form posted, or a WebSocket opened, from another origin
 │    ├── CaptchaRefused    403: a form's CAPTCHA token missing, bad, reused or unverifiable
 │    ├── TaskNotFound      404: unknown or expired task id
 │    ├── FormNotFound      404: no form with that id
 │    ├── RequestTimeout    408: the body came too slowly
 │    ├── IdempotencyConflict 409: key reused with another body
 │    ├── TaskNotFailed     409: only a failed task can be re-sent
 │    ├── TooLarge          413: a form post with too many fields
 │    ├── ValidationFailed  422: per-field messages
 │    ├── RateLimited       429: too many submits from one client
 │    ├── TooManyStreams    429: too many open streams from one client
 │    └── ServiceUnavailable 503: Redis is unreachable
 │         └── NotReplicated  503: no replica confirmed the write in time
 ├── UnsuitableRedis        the Redis given would lose queued mail; start-up stops
 ├── QueueGroupMissing      Redis lost the queue's worker group; the worker creates it again
 └── DeliveryError          one SMTP attempt failed
      ├── TransientFailure  try again later (4xx, connection trouble)
      │    └── Throttled    the server asks to slow down (421; 451/454
      │                     with 4.7.x or "rate", "too many", "throttl")
      ├── PermanentFailure  the mail can never go (5xx)
      │    └── UnsendableMessage  mailhub cannot build it safely (a value
      │                           it refuses, a header it did not write)
      └── ConfigurationFailure  the owner's setup is wrong (login, TLS);
                                no mail can go until it is fixed
"""

from __future__ import annotations


class MailhubError(Exception):
    """Base class of every error raised by mailhub itself."""


class SettingsError(MailhubError):
    """A setting is missing or invalid; the message names the variable."""


class ApiError(MailhubError):
    """A request mailhub refuses, rendered as `{"error": {...}}` JSON."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, fields: dict[str, list[str]] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        self.headers = headers or {}

    def document(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class InvalidRequest(ApiError):
    status = 400
    code = "bad_request"


class ValidationFailed(ApiError):
    status = 422
    code = "validation_failed"


class TaskNotFound(ApiError):
    status = 404
    code = "not_found"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class RecipientRefused(ApiError):
    status = 403
    code = "recipient_not_allowed"


class OriginRefused(ApiError):
    status = 403
    code = "origin_not_allowed"


class CaptchaRefused(ApiError):
    """403 with a code saying which: captcha_missing, captcha_invalid, captcha_unverifiable."""

    status = 403
    code = "captcha_invalid"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class FormNotFound(ApiError):
    status = 404
    code = "form_not_found"


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"


class IdempotencyConflict(ApiError):
    status = 409
    code = "idempotency_conflict"


class TaskNotFailed(ApiError):
    status = 409
    code = "not_failed"


class TooLarge(ApiError):
    status = 413
    code = "too_large"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


class TooManyStreams(ApiError):
    status = 429
    code = "too_many_streams"


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"


class NotReplicated(ServiceUnavailable):
    """A submit was written, but no replica confirmed it within REDIS_WAIT_TIMEOUT.

    Answered 503, so the client sends it again: with its Idempotency-Key the
    second send returns the same task, once a replica holds it.
    """

    def __init__(self) -> None:
        super().__init__(
            "The mail could not be stored safely yet; send it again (with the same Idempotency-Key).",
            headers={"Retry-After": "1"},
        )


class UnsuitableRedis(MailhubError):
    """The Redis mailhub was given may drop queued mail (it evicts keys) or lacks commands it needs."""


class QueueGroupMissing(MailhubError):
    """Redis answered NOGROUP: it restarted empty, was flushed, or failed over without the group."""


class DeliveryError(MailhubError):
    """One delivery attempt failed; `reason` is the server's reply or the fault.

    `reason` is for the owner (log, task hash). Visitors see a fixed phrase
    chosen by class (`mailhub.reasons`), or `public_reason` when given.
    """

    def __init__(self, reason: str, *, public_reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.public_reason = public_reason


class TransientFailure(DeliveryError):
    """Worth another attempt later."""


class Throttled(TransientFailure):
    """The server says mail comes too fast: every send should slow down, not only this one."""


class PermanentFailure(DeliveryError):
    """Another attempt would get the same answer."""


class UnsendableMessage(PermanentFailure):
    """The mail cannot be built, or its flattened headers are not the ones mailhub wrote."""


class ConfigurationFailure(DeliveryError):
    """The SMTP login or TLS setup failed: not this mail's fault, nor any other's."""
