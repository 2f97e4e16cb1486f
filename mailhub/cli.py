"""run.py's commands: all-in-one (default), web, worker, check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web
from pythonjsonlogger.json import JsonFormatter
from redis.asyncio import Redis

from mailhub import check, metrics, process
from mailhub.delivery.capture import start_capture_server
from mailhub.delivery.sender import SmtpSender
from mailhub.delivery.worker import Worker
from mailhub.errors import SettingsError, UnsuitableRedis
from mailhub.notify import notifier
from mailhub.settings import Settings, load_settings
from mailhub.store import redis_check, redis_client
from mailhub.store.embedded_valkey import EmbeddedRedis
from mailhub.store.tasks import TaskStore
from mailhub.web.app import create_runner, create_worker_runner

logger = logging.getLogger("mailhub")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailhub", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="all",
        choices=["all", "web", "worker", "check"],
        help="all: web and worker in one process (default); check: try the Redis and SMTP settings",
    )
    parser.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT or 8000)")
    return parser.parse_args(argv)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    # aiosmtpd (capture mode) logs every SMTP line at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"mailhub: {exc}", file=sys.stderr)
        return 1 if args.command == "check" else 2
    if args.command == "check":
        return check.main(settings)
    settings = replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    configure_logging(settings)
    run_web, run_worker = args.command in ("all", "web"), args.command in ("all", "worker")
    if settings.embedded_redis and args.command != "all":
        print(
            "mailhub: REDIS_URL (or REDIS_SENTINELS) is missing: separate web and worker processes "
            "must share one Redis (the embedded one serves the all-in-one run only)",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve(settings, web_app=run_web, worker=run_worker))
    except UnsuitableRedis as exc:
        print(f"mailhub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


async def serve(settings: Settings, *, web_app: bool, worker: bool) -> None:
    """Run the chosen parts until SIGINT or SIGTERM, then stop them gracefully."""
    process.raise_file_limit()
    process.AcceptErrorLog(asyncio.get_running_loop()).install()
    async with contextlib.AsyncExitStack() as stack:
        if settings.embedded_redis:
            embedded = EmbeddedRedis(settings.data_dir / "valkey")
            await asyncio.to_thread(embedded.start)
            stack.callback(embedded.stop)
            settings = replace(settings, redis_url=embedded.url)
        await _check_redis(settings)
        if worker:
            await stack.enter_async_context(running_worker(settings))
            if settings.metrics_port and not web_app:
                await stack.enter_async_context(
                    _serving(
                        create_worker_runner(settings),
                        settings.host,
                        settings.metrics_port,
                        "worker",
                        " (/healthz, /readyz, /metrics)",
                    )
                )
        if web_app:
            await stack.enter_async_context(
                _serving(
                    create_runner(settings), settings.host, settings.port, "mailhub", " (API docs at /docs)"
                )
            )
        _tune_garbage_collector()
        await _stop_requested()
        logger.info("stopping")


async def _check_redis(settings: Settings) -> None:
    """Refuse (`UnsuitableRedis`) a Redis that would lose queued mail; log what is risky."""
    redis = redis_client.from_settings(settings)
    try:
        await redis_check.check_at_startup(redis, allow_eviction=settings.redis_allow_eviction)
    finally:
        await redis.aclose()


def _tune_garbage_collector() -> None:
    """Rare full collections for a server that holds many connections; young ones stay frequent.

    A web process taking 10,000 SSE streams (`python -m bench.fanout_10k`),
    after the freeze: with the default thresholds it spent 0.9 CPU s in 1,545
    collections, pausing up to 0.14 s; with these, 0.3 s in 511, at most
    37 ms. What start-up made stays alive: frozen, it is never scanned again.

    Generation 0 is still collected every 2,000 new objects, so a reference
    cycle that holds a large refused body does not wait long: with 50,000
    there (0.15 s in 20 collections above), such cycles kept 311 MiB after 320
    refused half-megabyte bodies (`python -m bench.refused_bodies`, before the
    views stopped making them); with 2,000, 66 MiB.
    """
    gc.freeze()
    gc.set_threshold(2_000, 10, 100)


async def _stop_requested() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@contextlib.asynccontextmanager
async def _serving(runner: web.AppRunner, host: str, port: int, name: str, note: str) -> AsyncIterator[None]:
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("%s listening on http://%s:%d%s", name, host, port, note)
    try:
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Settings]:
    """A process's worker, started; stopped on exit, then everything it opened closed.

    In capture mode it delivers to a capture SMTP server of its own. Yields
    the settings it delivers with (in capture mode, that server's address).
    """
    async with contextlib.AsyncExitStack() as stack:
        redis = redis_client.from_settings(settings)
        stack.push_async_callback(redis.aclose)
        if settings.capture_mode:
            settings = await _start_capturing(stack, redis, settings)
        sender = SmtpSender(settings)
        stack.push_async_callback(sender.close)
        metrics.watch_pool(sender.pool)
        worker = Worker.from_settings(TaskStore.from_settings(redis, settings), sender, settings)
        await stack.enter_async_context(worker.running())
        await stack.enter_async_context(notifier.running(settings))
        yield settings


async def _start_capturing(stack: contextlib.AsyncExitStack, redis: Redis, settings: Settings) -> Settings:
    """Start the capture SMTP server, closed by `stack`; the settings that deliver to it."""
    server = await start_capture_server(redis)
    stack.callback(server.close)
    port = server.sockets[0].getsockname()[1]
    logger.warning(
        "CAPTURE MODE: SMTP_HOST is not set, so mail is captured on port %d "
        "and NOT delivered; see /dev/inbox",
        port,
    )
    return replace(settings, smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none")
