"""The web application: create_app(settings) wires routes, middlewares and resources."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from mailhub.forms.captcha import VERIFY_TIMEOUT, CaptchaVerifier
from mailhub.forms.intake import FormIntake
from mailhub.settings import Settings
from mailhub.store import redis_client
from mailhub.store.form_ledger import FormLedger
from mailhub.store.rate_limit import RateCounter
from mailhub.store.tasks import TaskStore
from mailhub.web import (
    admin,
    admin_auth,
    appkeys,
    cors,
    deadlines,
    demo,
    form_pages,
    forms,
    health,
    inbox,
    openapi,
    security_headers,
    streams,
    views,
)
from mailhub.web.guard import SubmitGuard
from mailhub.web.locales import Locales
from mailhub.web.middlewares import json_errors
from mailhub.web.protocol import Runner


def _static_dir() -> Path:
    """The demo form: beside the package in a checkout, under share/ once installed."""
    checkout = Path(__file__).resolve().parents[2] / "static"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "mailhub" / "static"


STATIC_DIR = _static_dir()
#: Room for the JSON envelope around a maximal 64 KiB body, escapes included.
MAX_REQUEST_BYTES = 512 * 1024


async def _redis_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    redis = redis_client.from_settings(settings)
    app[appkeys.REDIS] = redis
    app[appkeys.STORE] = TaskStore.from_settings(redis, settings)
    app[appkeys.GUARD] = SubmitGuard(settings, redis)
    yield
    await redis.aclose()


def static_page(name: str) -> Handler:
    """A handler serving one HTML file of the demo at a clean path."""

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / name)

    return page


async def _forms_context(app: web.Application) -> AsyncIterator[None]:
    """The forms' intake, with one HTTP client session for CAPTCHA checks if any form has one."""
    settings, redis = app[appkeys.SETTINGS], app[appkeys.REDIS]
    ledger = FormLedger(redis)
    session = None
    verifier = None
    if any(form.captcha for form in settings.forms.values()):
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=VERIFY_TIMEOUT))
        verifier = CaptchaVerifier(
            session, settings.captcha_secrets, ledger, verify_url=settings.captcha_verify_url
        )
    app[appkeys.FORMS] = FormIntake(settings.forms, app[appkeys.STORE], RateCounter(redis), ledger, verifier)
    yield
    if session is not None:
        await session.close()


def create_app(settings: Settings) -> web.Application:
    access = admin_auth.AdminAccess(settings)
    app = web.Application(
        middlewares=[
            json_errors,
            admin_auth.middleware(access),
            deadlines.body_deadline(settings.body_timeout),
        ],
        client_max_size=MAX_REQUEST_BYTES,
    )
    cors.setup(app, settings.cors_origins)
    security_headers.setup(app)
    app[appkeys.SETTINGS] = settings
    app[appkeys.LOCALES] = Locales(STATIC_DIR / "locales")
    app.cleanup_ctx.append(_redis_context)
    app.cleanup_ctx.append(_forms_context)
    app.cleanup_ctx.append(streams.live_context)
    app.on_shutdown.append(streams.close_streams)
    app.router.add_post("/api/v1/email/received", views.submit)
    app.router.add_get(views.RESULT_PATH, views.result)
    app.router.add_post(forms.ROUTE, forms.submit_form)
    app.router.add_get(form_pages.THANKS_PATH, forms.thanks)
    app.router.add_get(streams.SSE_PATH, streams.task_events)
    app.router.add_get(streams.WS_PATH, streams.task_events_ws)
    app.router.add_get(demo.DEMO_CONFIG_PATH, demo.demo_config)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.prometheus)
    app.router.add_get("/", static_page("index.html"))
    app.router.add_get("/contact", static_page("contact.html"))
    app.router.add_get("/contact-js", static_page("contact-js.html"))
    app.router.add_static("/static", STATIC_DIR)
    if settings.capture_mode:
        app.router.add_get("/dev/inbox", inbox.page)
        app.router.add_get("/dev/inbox/messages", inbox.messages)
    admin.setup(app, access, STATIC_DIR)
    openapi.setup(app)
    return app


def create_runner(settings: Settings) -> web.AppRunner:
    """The runner every web process uses.

    handler_cancellation: a client that hangs up stops its handler, and so
    its stream, at once. keepalive_timeout: an idle connection, or one that
    is slow to send its headers, is closed (see `deadlines`); aiohttp's
    default keeps it an hour.
    """
    return Runner(
        create_app(settings),
        access_log=None,
        handler_cancellation=True,
        keepalive_timeout=settings.keepalive_timeout,
    )


def create_worker_runner(settings: Settings) -> web.AppRunner:
    """A worker process's own endpoints (METRICS_PORT): /healthz, /readyz and /metrics."""
    app = web.Application(middlewares=[json_errors])
    security_headers.setup(app)
    app[appkeys.SETTINGS] = settings
    app.cleanup_ctx.append(_redis_context)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.prometheus)
    return Runner(app, access_log=None, keepalive_timeout=settings.keepalive_timeout)
