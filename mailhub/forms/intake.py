"""Take one post to a form: check it, and queue its mail (and the visitor's confirmation).

The order keeps refusals cheap and a CAPTCHA token unspent until the post
is otherwise fine: the form, its origins, its rate limit, the honeypot, the
fields, then the CAPTCHA, then the queue. No HTTP here: the web layer reads
the request into a `Post` and renders the `Outcome` or the refusal.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from mailhub.errors import ApiError, CaptchaRefused, FormNotFound, OriginRefused
from mailhub.forms.compose import compose
from mailhub.forms.definitions import FormDefinition
from mailhub.forms.fields import clean_values
from mailhub.store.rate_limit import Quota, RateCounter
from mailhub.store.tasks import IdempotencyKey, TaskStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Post:
    """One post to a form, as the web layer read it."""

    form_id: str
    #: Everything posted, by name (first value of a repeated name).
    values: Mapping[str, object]
    #: The client's address, as the guard determined it.
    client: str
    origin: str | None = None
    referer: str | None = None
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
        verifier: Verifier | None = None,
    ) -> None:
        self.forms = forms
        self.store = store
        self.counter = counter
        self.verifier = verifier

    def form(self, form_id: str) -> FormDefinition:
        """The form with that id, or `FormNotFound`."""
        form = self.forms.get(form_id)
        if form is None:
            raise FormNotFound(f"There is no form {form_id!r} on this server.")
        return form

    async def submit(self, post: Post, quota: Quota) -> Outcome:
        """Queue the post's mail; raise the `ApiError` that refuses it.

        `quota` is the client's RATE_LIMIT: every post counts against it, as
        on the contract endpoint, and against the form's own `rate_limit`.
        """
        try:
            form = self.form(post.form_id)
            check_origin(form, post.origin, post.referer)
            await self.counter.count(Quota(f"form:{form.form_id}:{post.client}", form.rate_windows))
            if form.honeypot and post.values.get(form.honeypot):
                logger.warning("form %s: honeypot filled by %s: dropped quietly", form.form_id, post.client)
                await self.counter.count(quota)
                return Outcome(form, str(uuid.uuid4()), "honeypot")
            mail = compose(form, clean_values(form, post.values))
            await self._check_captcha(form, post)
        except ApiError:
            await self.counter.count(quota)
            raise
        queued = await self.store.accept(mail, post.idempotency_key, quota)
        if not queued.created:
            logger.info("task %s: repeated post to form %s", queued.task_id, form.form_id)
            return Outcome(form, queued.task_id, "duplicate")
        logger.info("task %s: queued from form %s", queued.task_id, form.form_id)
        return Outcome(form, queued.task_id, "accepted")

    async def _check_captcha(self, form: FormDefinition, post: Post) -> None:
        if not form.captcha:
            return
        token = post.values.get(form.token_field)
        if not isinstance(token, str) or not token.strip():
            raise CaptchaRefused("Complete the CAPTCHA check, then send again.", "captcha_missing")
        if self.verifier is None:  # fail closed
            raise CaptchaRefused("The CAPTCHA cannot be checked right now.", "captcha_unverifiable")
        await self.verifier.verify(form.captcha, token.strip(), post.client)


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
