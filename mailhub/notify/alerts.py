"""Alert mails to the owner (ALERT_EMAIL): sending paused, sending resumed, digests of failed mail.

Each alert is queued as a task like any mail, so it waits, like the mail it
reports on, while sending is paused, and is delivered once it works again
(the webhook carries the news meanwhile). Alert tasks are marked (`alert`):
their own outcome is neither a webhook nor in a digest, so alerts never
report on themselves. They go to ALERT_EMAIL whatever ALLOWED_RECIPIENTS
says: that list guards the submit endpoint, which alerts do not pass.
"""

from __future__ import annotations

import logging
from typing import Any

from mailhub.store.alerts import AlertStore, Digest
from mailhub.store.tasks import EmailRequest, IdempotencyKey, TaskStore

logger = logging.getLogger(__name__)

#: The idempotency scope of alert mails: a notice queued twice is one task.
SCOPE = "alerts"


class AlertMailer:
    """Turns sending changes and failed mail into alert mails on the queue."""

    def __init__(
        self, tasks: TaskStore, alerts: AlertStore, *, to: str, interval: float, recheck_interval: float
    ) -> None:
        self.tasks = tasks
        self.alerts = alerts
        self.to = to
        self.interval = interval
        self.recheck_interval = recheck_interval

    async def queue_notices(self) -> int:
        """Queue a mail for each sending change waiting; returns how many."""
        notices = await self.alerts.notices()
        for notice in notices:
            request = self._notice_mail(notice.payload)
            # Keyed by the event: two workers, or one that died before forgetting it, queue one task.
            queued = await self.tasks.accept(request, IdempotencyKey(SCOPE, notice.id))
            await self.alerts.notice_done(notice)
            logger.info("alert mail to %s queued (task %s): %s", self.to, queued.task_id, request.subject)
        return len(notices)

    async def queue_digest(self) -> bool:
        """Queue a digest of the failed mail waiting, unless one was queued within the interval."""
        digest = await self.alerts.take_digest(self.interval)
        if digest is None:
            return False
        queued = await self.tasks.accept(self._digest_mail(digest))
        await self.alerts.digest_queued(digest)
        logger.info("digest of %d failed mails queued to %s (task %s)", digest.count, self.to, queued.task_id)
        return True

    def _notice_mail(self, event: dict[str, Any]) -> EmailRequest:
        status = event["data"]
        if status["paused"]:
            subject = "mailhub: sending is paused"
            body = (
                f"mailhub stopped sending mail at {status['at']}: the SMTP login or TLS setup "
                f"failed.\n\nWhy: {status['reason']}\nFound by: {status['worker']}\n\n"
                "No mail is failed meanwhile: it waits in the queue, and sending resumes by "
                f"itself once the login works again (checked every {self.recheck_interval:g} s). "
                "Check SMTP_HOST, SMTP_USER, SMTP_PASS and SMTP_TLS; `python run.py check` "
                "tries them.\n\nThis mail itself waited until sending worked again.\n"
            )
        else:
            subject = "mailhub: sending resumed"
            body = (
                f"mailhub sends mail again since {status['at']} (found by {status['worker']}).\n"
                "Mail that waited meanwhile is being delivered now.\n"
            )
        return self._mail(subject, body)

    def _digest_mail(self, digest: Digest) -> EmailRequest:
        count = digest.count
        lines = [
            f"{count} mail{'s' if count != 1 else ''} failed since the last digest "
            f"(at most one digest every {_duration(self.interval)}).",
            "",
        ]
        for failure in digest.failures:
            lines += [
                f"{failure.get('at', '')}  task {failure.get('task_id', '')}",
                f"  to:     {failure.get('to', '')}",
                f"  reason: {failure.get('reason', '')}",
                f"  detail: {failure.get('detail', '')}",
                "",
            ]
        if digest.skipped:
            lines.append(f"... and {digest.skipped} more, not listed.")
        subject = f"mailhub: {count} failed mail{'s' if count != 1 else ''}"
        return self._mail(subject, "\n".join(lines) + "\n")

    def _mail(self, subject: str, body: str) -> EmailRequest:
        return EmailRequest(to=self.to, subject=subject, body=body, rendered=True, alert=True)


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"
