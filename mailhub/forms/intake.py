"""Take one post to a form: check it, and queue its mail (and the visitor's confirmation).

The order keeps refusals cheap and a CAPTCHA token unspent until the post
is otherwise fine: the form, its origins, its rate limit, the honeypot, the
fields, then the CAPTCHA, then the queue. No HTTP here: the web layer reads
the request into a `Post` and renders the `Outcome` or the refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from mailhub.errors import ApiError, CaptchaRefused, FormNotFound, OriginRefused
from mailhub.forms.compose import compose, compose_confirmation
from mailhub.forms.definitions import FormDefinition
from mailhub.forms.fields import clean_values
from mailhub.store.form_ledger import FormLedger
from mailhub.store.rate_limit import Quota, RateCounter
from mailhub.store.tasks import EmailRequest, IdempotencyKey, TaskStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Post:
    """One post to a form, as the web layer read it."""

    form_id: str
    #: Everything posted, by name (first value of a repeated name).
    values: Mapping[str, object]
    #: The client's address, as the guard determined it (for the CAPTCHA check and the log).
    client: str
    origin: str | None = None
    referer: str | None = None
    #: What rate limits count: the address, or its /64 for IPv6 (the guard's client group).
    client_group: str = ""
    #: The Idempotency-Key, scoped to the client by the guard.
    idempotency_key: IdempotencyKey | None = None


@dataclass(frozen=True)
class Outcome:
    """A post taken: its task id, and whether it was `accepted`, a `duplicate` or a `honeypot`."""

    form: FormDefinition
    task_id: str
    kind: str


class Verifier(Protocol):
    async def verify(self, provider: str, token: str, client: str) -> None:
        """Return if the token is good; raise `CaptchaRefused` otherwise."""


class FormIntake:
    """Checks posts against the forms and queues their mail; takes the store and a rate counter."""

    def __init__(
        self,
        forms: Mapping[str, FormDefinition],
        store: TaskStore,
        counter: RateCounter,
        ledger: FormLedger,
        verifier: Verifier | None = None,
    ) -> None:
        self.forms = forms
        self.store = store
        self.counter = counter
        self.ledger = ledger
        self.verifier = verifier

    def form(self, form_id: str) -> FormDefinition:
        """The form with that id, or `FormNotFound`."""
        form = self.forms.get(form_id)
        if form is None:
            raise FormNotFound(f"There is no form {form_id!r} on this server.")
        return form

    async def submit(self, post: Post, quota: Quota) -> Outcome:
        """Queue the post's mail (and its confirmation); raise the `ApiError` that refuses it.

        `quota` is the client's RATE_LIMIT: every post that could have
        queued a mail counts against it, as on the contract endpoint, and
        against the form's own `rate_limit`. One to a form that does not exist
        or from a page outside the form's `origins` weighs nothing: another
        site's page can make its visitor's browser send such posts, and must
        not lock the visitor out. A filled honeypot goes through every check
        and gets the same answer as a real post (a decoy task that never sends).
        """
        form = self.form(post.form_id)
        check_origin(form, post.origin, post.referer)
        try:
            group = post.client_group or post.client
            await self.counter.count(Quota(f"form:{form.form_id}:{group}", form.rate_windows))
            values = clean_values(form, post.values)
            mail = compose(form, values)
            earlier = await self._repeat(post, mail)
            if earlier is None:
                await self._check_captcha(form, post)
        except ApiError:
            await self.counter.count(quota)
            raise
        # A repeat is answered by `accept` too: the same task, counted once, and
        # with replicas only once they hold it (a resend after a 503 must not
        # be told `queued` before that).
        decoy = earlier is None and bool(form.honeypot and post.values.get(form.honeypot))
        queued = await self.store.accept(mail, post.idempotency_key, quota, decoy=decoy)
        if decoy:
            logger.warning(
                "task %s: form %s honeypot filled by %s: a decoy", queued.task_id, form.form_id, post.client
            )
            return Outcome(form, queued.task_id, "honeypot")
        if not queued.created:
            logger.info("task %s: repeated post to form %s", queued.task_id, form.form_id)
            return Outcome(form, queued.task_id, "duplicate")
        logger.info("task %s: queued from form %s", queued.task_id, form.form_id)
        await self._confirm(form, values, queued.task_id)
        return Outcome(form, queued.task_id, "accepted")

    async def _repeat(self, post: Post, mail: EmailRequest) -> str | None:
        """The task of an earlier identical post under the same Idempotency-Key.

        Its CAPTCHA was verified then; a resend (a lost answer, a reload)
        must not need a new token, which the visitor no longer has.
        """
        if post.idempotency_key is None:
            return None
        return await self.store.repeat_of(post.idempotency_key, mail)

    async def _check_captcha(self, form: FormDefinition, post: Post) -> None:
        if not form.captcha:
            return
        token = post.values.get(form.token_field)
        if not isinstance(token, str) or not token.strip():
            raise CaptchaRefused("Complete the CAPTCHA check, then send again.", "captcha_missing")
        if self.verifier is None:  # fail closed
            raise CaptchaRefused("The CAPTCHA cannot be checked right now.", "captcha_unverifiable")
        await self.verifier.verify(form.captcha, token.strip(), post.client)

    async def _confirm(self, form: FormDefinition, values: dict[str, str], task_id: str) -> None:
        """Queue the visitor's confirmation, unless their address had its share today."""
        confirmation = compose_confirmation(form, values)
        if confirmation is None or form.confirmation is None:
            return
        if not await self.ledger.count_confirmation(confirmation.to, form.confirmation.per_day):
            logger.warning(
                "task %s: no confirmation: its address already got %d today",
                task_id,
                form.confirmation.per_day,
            )
            return
        queued = await self.store.accept(confirmation)
        logger.info("task %s: confirmation of task %s queued", queued.task_id, task_id)


def check_origin(form: FormDefinition, origin: str | None, referer: str | None) -> None:
    """Refuse a post from a page outside the form's `origins` (none set: any page).

    The Origin header counts, else the Referer's origin; with neither, the
    post is refused: a form that names its origins fails closed.
    """
    if not form.origins:
        return
    seen = origin.lower() if origin and origin != "null" else _origin_of(referer)
    if seen is None:
        raise OriginRefused(
            "This form only takes posts from its own site, and this post did not say where from."
        )
    if seen not in form.origins:
        raise OriginRefused("This form does not take posts from this site.")


def _origin_of(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()
