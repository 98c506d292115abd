"""The server node: `create_app(settings)` wires; resources open and close in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from notify_server import api, appkeys, delivery
from notify_server.batching import BatchLoader
from notify_server.connections import NotificationWebSocketManager
from notify_server.constants import CLOSE_GOING_AWAY
from notify_server.db import close_pool, create_pool
from notify_server.heartbeat import run_heartbeat
from notify_server.metrics import ServerMetrics
from notify_server.notifications import NotificationRepository
from notify_server.presence import Presence
from notify_server.push import StreamPushTransport
from notify_server.session_watch import SessionWatcher
from notify_server.sessions import SessionStore
from notify_server.settings import Settings
from notify_server.stores import STORE_ERRORS
from notify_server.ws import notifications_ws

logger = logging.getLogger("notify.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"
LISTEN_BACKLOG = 8192


def new_node_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(settings: Settings, *, node_id: str | None = None, dev: bool = False) -> web.Application:
    """One node: WebSocket endpoint, REST API, health and metrics. Nothing connects until startup."""
    settings.require_services()
    app = web.Application(middlewares=[api.json_errors], client_max_size=settings.limits.request_max_bytes)
    app[appkeys.SETTINGS] = settings
    app[appkeys.NODE_ID] = node_id or settings.server.node_id or new_node_id()
    app.cleanup_ctx.extend([postgres_ctx, redis_ctx, node_ctx, push_consumer_ctx, presence_refresher_ctx,
                            session_watch_ctx, heartbeat_ctx])
    app.on_shutdown.append(drain_sockets)
    app.router.add_get("/ws/notifications", notifications_ws)
    app.router.add_get("/static/notify-client.js", browser_client)
    api.add_routes(app)
    if dev:
        from notify_server.demo import add_demo_routes

        add_demo_routes(app)
    return app


async def browser_client(request: web.Request) -> web.FileResponse:
    """The plain-ES-module browser client (docs/client.md), for any page that wants it."""
    return web.FileResponse(STATIC_DIR / "notify-client.js")


# ---------------------------------------------------------------- resources


async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = await create_pool(app[appkeys.SETTINGS].database)
    app[appkeys.DB_POOL] = pool
    yield
    await close_pool(pool)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = Redis.from_url(app[appkeys.SETTINGS].redis.url, health_check_interval=30)
    app[appkeys.REDIS] = client
    yield
    await client.aclose()


async def node_ctx(app: web.Application) -> AsyncIterator[None]:
    """The node's own objects, wired over the pools."""
    settings = app[appkeys.SETTINGS]
    node_id = app[appkeys.NODE_ID]
    repository = NotificationRepository(app[appkeys.DB_POOL])
    presence = Presence(app[appkeys.REDIS], settings.presence.ttl_s)

    async def add_present(user_ids: Sequence[str]) -> dict[str, None]:
        await presence.add(node_id, user_ids)
        return {}

    # Users arriving in the same loop turn (a reconnect storm) are recorded with one pipeline.
    present_batch: BatchLoader[str, None] = BatchLoader(add_present, default=None)

    async def became_present(user_id: str) -> None:
        try:
            await present_batch.load(user_id)
        except STORE_ERRORS as exc:  # the refresher writes it again once Redis is back
            logger.warning("presence not recorded (%s)", type(exc).__name__)

    async def became_absent(user_id: str) -> None:
        try:
            await presence.remove(node_id, [user_id])
        except STORE_ERRORS as exc:  # it expires by itself
            logger.warning("presence not cleared (%s)", type(exc).__name__)

    manager = NotificationWebSocketManager(
        repository.unread_state,
        send_queue_max=settings.limits.send_queue_max,
        on_first_connection=became_present,
        on_last_connection=became_absent,
    )
    metrics = ServerMetrics(lambda: manager.connection_count)
    manager.on_frames_sent = metrics.frames_pushed.inc
    app[appkeys.NOTIFICATIONS] = repository
    app[appkeys.SESSIONS] = SessionStore(app[appkeys.DB_POOL])
    app[appkeys.PRESENCE] = presence
    app[appkeys.PUSH] = StreamPushTransport(
        app[appkeys.REDIS],
        maxlen=settings.push.stream_maxlen,
        stream_ttl_s=settings.presence.ttl_s,
        job_expiry_s=settings.push.job_expiry_s,
        read_batch=settings.push.read_batch,
        read_block_ms=settings.push.read_block_ms,
    )
    app[appkeys.MANAGER] = manager
    app[appkeys.METRICS] = metrics
    app[appkeys.SESSION_WATCHER] = SessionWatcher(manager, app[appkeys.SESSIONS])
    logger.info("node %s ready", node_id)
    yield
    await app[appkeys.SESSION_WATCHER].close()
    await manager.wait_closing()


@contextlib.asynccontextmanager
async def _background(name: str, coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run a task for the app's lifetime; a crash is logged, shutdown cancels and awaits it."""
    task = asyncio.get_running_loop().create_task(coro, name=name)

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            logger.error("background task %s died", name, exc_info=done.exception())

    task.add_done_callback(report)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _task_ctx(name: str, make: Callable[[web.Application], Coroutine[Any, Any, None]]) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with _background(name, make(app)):
            yield

    ctx.__name__ = f"{name.replace('-', '_')}_ctx"
    return ctx


async def consume_pushes(app: web.Application) -> None:
    await delivery.consume_pushes(app[appkeys.PUSH], app[appkeys.NODE_ID], app[appkeys.MANAGER], app[appkeys.METRICS])


async def refresh_presence(app: web.Application) -> None:
    """Rewrite this node's presence (and keep its stream alive) until stopped; rebuilds after a Redis
    restart. On a clean stop, the node's presence and stream are removed."""
    settings = app[appkeys.SETTINGS]
    node_id = app[appkeys.NODE_ID]
    presence = app[appkeys.PRESENCE]
    transport = app[appkeys.PUSH]
    manager = app[appkeys.MANAGER]
    try:
        while True:
            await asyncio.sleep(settings.presence.refresh_interval_s)
            try:
                await presence.add(node_id, manager.user_ids())
                await transport.touch(node_id)
            except STORE_ERRORS as exc:
                logger.warning("presence refresh failed (%s)", type(exc).__name__)
    finally:
        with contextlib.suppress(*STORE_ERRORS):
            await presence.remove(node_id, manager.user_ids())
            await transport.delete(node_id)


async def watch_sessions(app: web.Application) -> None:
    watcher = app[appkeys.SESSION_WATCHER]
    await asyncio.gather(
        watcher.run_revocations(app[appkeys.REDIS]),
        watcher.run_periodic(app[appkeys.SETTINGS].session.recheck_interval_s),
    )


async def heartbeat(app: web.Application) -> None:
    settings = app[appkeys.SETTINGS]
    await run_heartbeat(app[appkeys.MANAGER], settings.heartbeat.interval_s, settings.heartbeat.timeout_s)


push_consumer_ctx = _task_ctx("push-consumer", consume_pushes)
presence_refresher_ctx = _task_ctx("presence-refresher", refresh_presence)
session_watch_ctx = _task_ctx("session-watch", watch_sessions)
heartbeat_ctx = _task_ctx("heartbeat", heartbeat)


async def drain_sockets(app: web.Application) -> None:
    """Shutdown: every socket gets 1001 (reconnect elsewhere after a random delay)."""
    manager = app[appkeys.MANAGER]
    count = manager.connection_count
    await manager.close_all(CLOSE_GOING_AWAY, b"server shutting down")
    logger.info("closed %d socket(s) with %d", count, CLOSE_GOING_AWAY)


def run_node(settings: Settings) -> None:
    """`notify-server serve`: run until SIGTERM or SIGINT. The port is bound before anything starts,
    so an unknown host or a port in use fails at once (OSError) with nothing opened."""
    # A deep backlog: a reconnect storm of thousands arrives at once (the kernel caps it at somaxconn).
    listening = socket.create_server((settings.server.host, settings.server.port), backlog=LISTEN_BACKLOG)
    app = create_app(settings)
    web.run_app(
        app,
        sock=listening,
        shutdown_timeout=settings.server.shutdown_timeout_s,
        print=lambda message: logger.info("%s", message.strip()),
        access_log_format='%a "%r" %s %b %Tfs',
    )
