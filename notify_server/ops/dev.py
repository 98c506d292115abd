"""`notify-server dev`: the first run in one command.

Embedded Postgres and Redis when no URL is configured (data under `dev.data_dir`, kept between runs),
migrations, one server node with the demo page, one worker — all in this process, all stopped by
Ctrl-C or SIGTERM, embedded servers included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

from aiohttp import web

from notify_server.core.settings import ConfigError, Settings
from notify_server.core.vapid_keys import create_key_file
from notify_server.ops.embedded import EmbeddedUnavailable, embedded_postgres, embedded_redis
from notify_server.storage.migrations import apply_migrations
from notify_server.web.app import create_app
from notify_server.web.demo import add_demo_routes


class Worker(Protocol):
    """What dev runs beside the node: `notify-server worker`'s consumer (the CLI passes its factory)."""

    async def main(self) -> None: ...

    async def close(self) -> None: ...


WorkerFactory = Callable[[Settings], Worker]
LOOPBACK_HOSTS = frozenset(("127.0.0.1", "localhost", "::1"))

logger = logging.getLogger("notify.dev")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(line: str) -> None:
    print(line, flush=True)


def dev_origins(settings: Settings) -> tuple[str, ...]:
    port = settings.server.port
    hosts = {settings.server.host, "127.0.0.1", "localhost"}
    return tuple(sorted({*settings.websocket.allowed_origins, *(f"http://{h}:{port}" for h in hosts)}))


def run_dev(settings: Settings, make_worker: WorkerFactory) -> int:
    if settings.server.host not in LOOPBACK_HOSTS:
        print(
            f"notify-server: WARNING: dev listens on {settings.server.host}, not on loopback: anyone who can reach "
            "it may sign in as any user and emit any event through the demo routes. Use serve for that.",
            file=sys.stderr, flush=True,
        )
    data_dir = Path(settings.dev.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # unwind (and stop what we started) on SIGTERM
    try:
        with contextlib.ExitStack() as started:
            database_url, redis_url = settings.database.url, settings.redis.url
            try:
                if not database_url:
                    _say(f"starting embedded Postgres (data in {data_dir})")
                    database_url = started.enter_context(embedded_postgres(data_dir))
                if not redis_url:
                    _say("starting embedded Redis (valkey)")
                    redis_url = started.enter_context(embedded_redis(data_dir / "valkey"))
            except EmbeddedUnavailable as exc:
                raise ConfigError(str(exc)) from None
            settings = settings.replace(
                database={"url": database_url},
                redis={"url": redis_url},
                websocket={"allowed_origins": dev_origins(settings)},
            )
            settings = dev_web_push(settings, data_dir)
            applied = apply_migrations(database_url)
            _say(f"migrations: {len(applied)} applied")
            asyncio.run(_serve_and_work(settings, make_worker))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    _say("stopped")
    return 0


# ---- web push (issue 20)
def dev_web_push(settings: Settings, data_dir: Path) -> Settings:
    """Web Push on in dev when the config leaves it off: a VAPID key made once in the data directory, so
    the demo page's push button works (the browser's own push service is reached from this machine)."""
    if settings.web_push.enabled or settings.web_push.vapid_private_key_file:
        return settings
    key_file = data_dir / "vapid.pem"
    if not key_file.exists():
        create_key_file(str(key_file))
        _say(f"web push: VAPID key created in {key_file}")
    return settings.replace(web_push={"enabled": True, "vapid_private_key_file": str(key_file),
                                      "subject": settings.web_push.subject or "mailto:dev@localhost"})
# ---- end web push


async def _serve_and_work(settings: Settings, make_worker: WorkerFactory) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    runner = web.AppRunner(create_app(settings, extra_routes=add_demo_routes),
                           shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    worker = make_worker(settings)
    worker_task = loop.create_task(worker.main(), name="dev-worker")
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        page = f"http://{settings.server.host}:{settings.server.port}/"
        _say(f"  page:     {page}")
        _say(f"  postgres: {settings.database.url}")
        _say(f"  redis:    {settings.redis.url}")
        _say(
            f"  emit:     NOTIFY_DATABASE_URL='{settings.database.url}' NOTIFY_REDIS_URL='{settings.redis.url}' "
            f"notify-server emit CLAIM_REJECTED --to alice --data '{{\"provider_name\": \"Dr. Smith\", "
            f"\"claim_id\": \"abc123\"}}'"
        )
        _say(f"ready: open {page} (Ctrl-C stops everything)")
        stop_wait = loop.create_task(stop.wait())
        done, _ = await asyncio.wait({stop_wait, worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if worker_task in done and worker_task.exception() is not None:
            print(f"notify-server: worker stopped: {worker_task.exception()}", file=sys.stderr)
        stop_wait.cancel()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        await worker.close()
