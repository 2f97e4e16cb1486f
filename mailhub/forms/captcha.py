"""CAPTCHA verification: one POST of `secret` + `response` (+ `remoteip`) to the provider.

Cloudflare Turnstile, hCaptcha and reCAPTCHA share the same siteverify
exchange: a form-encoded POST, a JSON answer whose `success` says yes or no.
Everything fails closed: a missing or bad token, a token used before (the
provider says so, and mailhub remembers used tokens itself), and a provider
that cannot be reached or answers nonsense within the timeout are refusals.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping

import aiohttp

from mailhub.errors import CaptchaRefused
from mailhub.store.form_ledger import FormLedger

logger = logging.getLogger(__name__)

VERIFY_URLS = {
    "turnstile": "https://challenges.cloudflare.com/turnstile/v0/siteverify",
    "hcaptcha": "https://api.hcaptcha.com/siteverify",
    "recaptcha": "https://www.google.com/recaptcha/api/siteverify",
}
#: Seconds the provider gets to answer.
VERIFY_TIMEOUT = 5.0
#: Longer than any provider's token (Turnstile: 2,048 characters).
MAX_TOKEN = 8192


def _invalid() -> CaptchaRefused:
    return CaptchaRefused("The CAPTCHA check failed or expired; complete it again.", "captcha_invalid")


def _unverifiable() -> CaptchaRefused:
    return CaptchaRefused(
        "The CAPTCHA check could not be verified right now; try again in a moment.", "captcha_unverifiable"
    )


class CaptchaVerifier:
    """Verifies tokens with the providers; takes an aiohttp client session and the secrets."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secrets: Mapping[str, str],
        ledger: FormLedger,
        *,
        verify_url: str = "",
        timeout: float = VERIFY_TIMEOUT,
    ) -> None:
        self.session = session
        self.secrets = secrets
        self.ledger = ledger
        self.verify_url = verify_url
        self.timeout = timeout

    async def verify(self, provider: str, token: str, client: str) -> None:
        """Return if the provider confirms the token; raise `CaptchaRefused` otherwise."""
        if len(token) > MAX_TOKEN or not token.isprintable():
            raise _invalid()
        if not await self.ledger.claim_token(provider, token):
            logger.warning("%s token replayed by %s", provider, client)
            raise _invalid()
        try:
            answer = await self._ask(provider, token, client)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.error("%s verification unavailable: %s", provider, type(exc).__name__ + f": {exc}")
            await self.ledger.release_token(provider, token)
            raise _unverifiable() from None
        if not isinstance(answer, dict) or answer.get("success") is not True:
            codes = answer.get("error-codes") if isinstance(answer, dict) else None
            logger.warning("%s token from %s refused: %s", provider, client, codes)
            raise _invalid()

    async def _ask(self, provider: str, token: str, client: str) -> object:
        data = {"secret": self.secrets[provider], "response": token}
        if _is_ip(client):
            data["remoteip"] = client
        url = self.verify_url or VERIFY_URLS[provider]
        async with asyncio.timeout(self.timeout):
            async with self.session.post(url, data=data, allow_redirects=False) as response:
                if response.status != 200:
                    raise ValueError(f"siteverify answered HTTP {response.status}")
                return await response.json(content_type=None)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
