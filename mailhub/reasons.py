"""What a visitor is told about a delayed or failed mail: a few fixed phrases.

The result document (polling, SSE, WebSocket) is public: anyone holding the
task id reads it. An SMTP reply or a connection error can name hosts, ports
and accounts, so the document's `last_error` and `reason` carry one of these
phrases, chosen by the failure's class. The full text is kept for the owner:
in the task hash's `detail` field, in the log line with the task id, and as a
failure class (never raw text) in `/metrics`.
"""

from __future__ import annotations

from mailhub.errors import ConfigurationFailure, DeliveryError, PermanentFailure, UnsendableMessage

#: `last_error` while a retry waits.
TEMPORARY = "temporary failure, retrying"
PAUSED = "sending is paused"
#: `reason` of a failed mail.
REFUSED = "the receiving server refused the message"
OUT_OF_ATTEMPTS = "temporary failure, no attempts left"
INTERRUPTED = "the last attempt was interrupted"
#: A header value mailhub will not send (the detail says which header).
UNSENDABLE = "the message was not sent: a header value is not allowed"


def too_old(max_queue_age: int) -> str:
    """`reason` of a mail not delivered within `max_queue_age` seconds of being accepted."""
    for unit, seconds in (("h", 3600), ("d", 86400), ("min", 60)):
        if max_queue_age % seconds == 0 and max_queue_age // seconds < 100:
            return f"not delivered within {max_queue_age // seconds} {unit}"
    return f"not delivered within {max_queue_age} s"


def failure_class(failure: DeliveryError) -> str:
    """`permanent`, `configuration` or `transient`: the /metrics label of a failure."""
    if isinstance(failure, PermanentFailure):
        return "permanent"
    if isinstance(failure, ConfigurationFailure):
        return "configuration"
    return "transient"


def retrying(failure: DeliveryError) -> str:
    """The public `last_error` of an attempt that will be tried again."""
    return PAUSED if isinstance(failure, ConfigurationFailure) else TEMPORARY


def failed(failure: DeliveryError) -> str:
    """The public `reason` of a mail failed by this failure (its last attempt, or a permanent one)."""
    if failure.public_reason:
        return failure.public_reason
    if isinstance(failure, UnsendableMessage):
        return UNSENDABLE
    return REFUSED if isinstance(failure, PermanentFailure) else OUT_OF_ATTEMPTS
