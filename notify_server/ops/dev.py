"""`notify-server dev`: the first run in one command.

Embedded Postgres and Redis when no URL is configured (data under `dev.data_dir`, kept between runs),
migrations, one server node with the demo page, one worker — all in this process, all stopped by
Ctrl-C or SIGTERM, embedded servers included.

One `dev` per data directory (notify_server.ops.devlock): a second one says where the first one's page
is and touches nothing. An embedded server that stops while `dev` runs is named on stderr and on the
demo page (GET /dev/status), which cannot work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from aiohttp import web

from notify_server.core.settings import ConfigError, Settings
from notify_server.core.vapid_keys import create_key_file
from notify_server.ops.devlock import AlreadyRunning, dev_lock
from notify_server.ops.embedded import (
    EmbeddedUnavailable,
    embedded_postgres,
    embedded_redis,
    postgres_pid,
    redis_pid,
    stop_leftover_redis,
)
from notify_server.ops.worker_program import InProcessWorker
from notify_server.storage.migrations import apply_migrations
from notify_server.web.app import create_app
from notify_server.web.demo import DEV_STATUS, add_demo_routes

WorkerFactory = Callable[[Settings], InProcessWorker]  # the worker program's in_process
PidOf = Callable[[], int | None]  # the pid of a running embedded server, None once it has stopped
LOOPBACK_HOSTS = frozenset(("127.0.0.1", "localhost", "::1"))
EMBEDDED_CHECK_INTERVAL_S = 1.0

logger = logging.getLogger("notify.dev")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(line: str) -> None:
    print(line, flush=True)


def _complain(line: str) -> None:
    print(f"notify-server: {line}", file=sys.stderr, flush=True)


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
    page = f"http://{settings.server.host}:{settings.server.port}/"
    previous = signal.signal(signal.SIGTERM, _interrupt)  # unwind (and stop what we started) on SIGTERM
    try:
        with contextlib.ExitStack() as started:
            try:
                started.enter_context(dev_lock(data_dir, page))
            except AlreadyRunning as exc:  # its servers and data are its own: start nothing, stop nothing
                _complain(str(exc))
                return 1
            database_url, redis_url = settings.database.url, settings.redis.url
            watched: dict[str, PidOf] = {}
            try:
                if not database_url:
                    _say(f"starting embedded Postgres (data in {data_dir})")
                    database_url = started.enter_context(embedded_postgres(data_dir))
                    watched["Postgres"] = functools.partial(postgres_pid, data_dir)
                if not redis_url:
                    # We hold the data directory: a Valkey running on it is what a killed dev left behind.
                    leftover = stop_leftover_redis(data_dir / "valkey")
                    if leftover is not None:
                        _say(f"stopped the embedded Redis (pid {leftover}) that an earlier dev left running")
                    _say("starting embedded Redis (valkey)")
                    redis_url = started.enter_context(embedded_redis(data_dir / "valkey"))
                    watched["Redis"] = functools.partial(redis_pid, data_dir / "valkey")
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
            asyncio.run(_serve_and_work(settings, make_worker, watched))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    _say("stopped")
    return 0


async def watch_embedded(app: web.Application, watched: dict[str, PidOf]) -> None:
    """Name each embedded server that stops, once, on stderr and on the demo page (GET /dev/status)."""
    problems = app[DEV_STATUS].problems
    while True:
        for name, pid_of in watched.items():
            if name not in problems and pid_of() is None:
                problems[name] = (f"the embedded {name} has stopped: the demo cannot work without it. "
                                  "Stop this dev (Ctrl-C) and start it again.")
                _complain(problems[name])
        await asyncio.sleep(EMBEDDED_CHECK_INTERVAL_S)


# ---------------------------------------------------------------- web push
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


async def _serve_and_work(settings: Settings, make_worker: WorkerFactory, watched: dict[str, PidOf]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    app = create_app(settings, extra_routes=add_demo_routes)
    runner = web.AppRunner(app, shutdown_timeout=settings.server.shutdown_timeout_s)
    await runner.setup()
    worker = make_worker(settings)
    worker_task = loop.create_task(worker.main(), name="dev-worker")
    watch_task = loop.create_task(watch_embedded(app, watched), name="dev-embedded-watch")
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        try:
            await site.start()
        except OSError as exc:
            _complain(f"cannot listen on {settings.server.host}:{settings.server.port}: {exc.strerror or exc}")
            return
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
        watch_task.cancel()
        await runner.cleanup()
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        await worker.close()
