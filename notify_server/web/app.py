"""The server node: `create_app(settings)` wires; resources open and close in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from aiohttp import web

from notify_server.auth.authenticator import Authenticator
from notify_server.auth.session_watch import SessionWatcher
from notify_server.core.batching import BatchLoader
from notify_server.core.constants import CLOSE_GOING_AWAY
from notify_server.core.metrics import ServerMetrics
from notify_server.core.redis_client import redis_client
from notify_server.core.settings import Settings
from notify_server.core.stores import describe, reconnect_if_stale, unavailable
from notify_server.core.supervisor import LoopHealth, Supervisor
from notify_server.storage.db import Database
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.sessions import SessionStore
from notify_server.transport.connections import NotificationWebSocketManager
from notify_server.transport.delivery import PushConsumer
from notify_server.transport.heartbeat import run_heartbeat
from notify_server.transport.presence import Presence
from notify_server.transport.push import StreamPushTransport
from notify_server.transport.repair import PushGapRepair
from notify_server.transport.routing import PushRouter
from notify_server.web import api, appkeys, inbox, openapi, preferences, publish
from notify_server.web import push_subscriptions as web_push  # issue 20
from notify_server.web.process_port import process_port_ctx
from notify_server.web.sse import SSE_PATH, notifications_sse
from notify_server.web.ws import notifications_ws

logger = logging.getLogger("notify.app")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
LISTEN_BACKLOG = 8192
GC_YOUNG_THRESHOLD = 50_000  # allocations between two collections of the youngest generation (CPython: 700)

RouteAdder = Callable[[web.Application], None]


def new_node_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())[:32]
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def create_app(
    settings: Settings, *, node_id: str | None = None, extra_routes: RouteAdder | None = None
) -> web.Application:
    """One node: WebSocket endpoint, REST API, health and metrics. Nothing connects until startup, and
    nothing at startup needs Postgres or Redis to answer: the node comes up and reports not ready."""
    settings.require_services()
    app = web.Application(middlewares=[api.json_errors], client_max_size=settings.limits.request_max_bytes)
    app[appkeys.SETTINGS] = settings
    app[appkeys.NODE_ID] = node_id or settings.server.node_id or new_node_id()
    app.cleanup_ctx.extend([postgres_ctx, redis_ctx, auth_ctx, node_ctx, loops_ctx])
    app.cleanup_ctx.append(process_port_ctx)  # server.metrics_port (issue 21)
    app.on_shutdown.append(drain_sockets)
    app.router.add_get("/ws/notifications", notifications_ws)
    app.router.add_get(SSE_PATH, notifications_sse)
    app.router.add_get("/static/notify-client.js", browser_client)
    api.add_routes(app)
    inbox.add_routes(app)
    publish.add_routes(app)
    # Preferences (its own cleanup context, after the Postgres pool's)
    preferences.add_routes(app)
    openapi.add_routes(app)
    # Subscriptions; the service worker beside the client
    web_push.add_routes(app)
    app.router.add_get("/static/notify-sw.js", service_worker)
    if extra_routes is not None:
        extra_routes(app)
    return app


async def browser_client(request: web.Request) -> web.FileResponse:
    """The plain-ES-module browser client (docs/client.md), for any page that wants it."""
    return web.FileResponse(STATIC_DIR / "notify-client.js")


async def service_worker(request: web.Request) -> web.FileResponse:
    """The Web Push service worker (issue 20). Service-Worker-Allowed lets a page register it for the
    whole origin (scope "/") although it is served under /static/."""
    response = web.FileResponse(STATIC_DIR / "notify-sw.js")
    response.headers["Service-Worker-Allowed"] = "/"
    return response


# ---------------------------------------------------------------- resources


async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    db = Database(app[appkeys.SETTINGS].database)
    app[appkeys.DB] = db
    yield
    await db.close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    client = redis_client(app[appkeys.SETTINGS].redis, health_check_interval=30)
    app[appkeys.REDIS] = client
    yield
    await client.aclose()


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    """The session store and the auth methods over it (the proxy method's HTTP client opens here)."""
    sessions = SessionStore(app[appkeys.DB])
    authenticator = Authenticator(app[appkeys.SETTINGS].auth, sessions)
    app[appkeys.SESSIONS] = sessions
    app[appkeys.AUTH] = authenticator
    await authenticator.open()
    yield
    await authenticator.close()


async def node_ctx(app: web.Application) -> AsyncIterator[None]:
    """The node's own objects, wired over the pools."""
    settings = app[appkeys.SETTINGS]
    node_id = app[appkeys.NODE_ID]
    repository = NotificationRepository(app[appkeys.DB])
    presence = Presence(app[appkeys.REDIS], settings.presence.ttl_s)

    async def add_present(user_ids: Sequence[str]) -> dict[str, None]:
        await presence.add(node_id, user_ids)
        return {}

    # Users arriving in the same loop turn (a reconnect storm) are recorded with one pipeline.
    present_batch: BatchLoader[str, None] = BatchLoader(add_present, default=None)

    async def became_present(user_id: str) -> None:
        try:
            await present_batch.load(user_id)
        except Exception as exc:  # the refresher writes it again once Redis is back
            if not unavailable(exc):
                raise
            logger.warning("presence not recorded (%s)", describe(exc))

    async def became_absent(user_id: str) -> None:
        try:
            await presence.remove(node_id, [user_id])
        except Exception as exc:  # it expires by itself
            if not unavailable(exc):
                raise
            logger.warning("presence not cleared (%s)", describe(exc))

    manager = NotificationWebSocketManager(
        repository.unread_state,
        send_queue_max=settings.limits.send_queue_max,
        on_first_connection=became_present,
        on_last_connection=became_absent,
    )
    metrics = ServerMetrics(lambda: manager.connection_count)
    app[appkeys.AUTH].proxy_budget.on_limited = lambda limit: metrics.rate_limited.labels(limit).inc()
    manager.on_frames_sent = metrics.frames_pushed.inc
    transport = StreamPushTransport(
        app[appkeys.REDIS],
        maxlen=settings.push.stream_maxlen,
        stream_ttl_s=settings.presence.ttl_s,
        job_expiry_s=settings.push.job_expiry_s,
        read_batch=settings.push.read_batch,
        read_block_ms=settings.push.read_block_ms,
    )
    app[appkeys.NOTIFICATIONS] = repository
    app[appkeys.PRESENCE] = presence
    app[appkeys.PUSH] = transport
    app[appkeys.ROUTER] = PushRouter(presence, transport)
    app[appkeys.REPAIR] = repair = PushGapRepair(manager, repository)
    app[appkeys.SUPERVISOR] = Supervisor(
        metrics.loop_restarts, on_failure=functools.partial(reconnect_if_stale, app[appkeys.REDIS]),
        on_change=repair.loop_changed,
    )
    app[appkeys.MANAGER] = manager
    app[appkeys.METRICS] = metrics
    app[appkeys.SESSION_WATCHER] = SessionWatcher(manager, app[appkeys.SESSIONS], app[appkeys.AUTH].revalidate)
    logger.info("node %s ready", node_id)
    yield
    await app[appkeys.SESSION_WATCHER].close()
    await manager.wait_closing()


async def loops_ctx(app: web.Application) -> AsyncIterator[None]:
    """The node's background loops, supervised (notify_server.core.supervisor): restarted after any failure,
    named by /readyz while down. On a clean stop the node's presence and stream are removed."""
    settings = app[appkeys.SETTINGS]
    manager = app[appkeys.MANAGER]
    watcher = app[appkeys.SESSION_WATCHER]
    supervisor = app[appkeys.SUPERVISOR]
    consumer = PushConsumer(app[appkeys.PUSH], app[appkeys.NODE_ID], manager, app[appkeys.METRICS])
    supervisor.start("push-consumer", consumer.run)
    supervisor.start("presence-refresher", functools.partial(refresh_presence, app))
    supervisor.start("revocation-listener", functools.partial(watcher.run_revocation_listener, app[appkeys.REDIS]))
    supervisor.start("revocation-applier", watcher.run_revocation_applier)
    supervisor.start("session-recheck", functools.partial(watcher.run_periodic, settings.session.recheck_interval_s))
    supervisor.start("heartbeat", functools.partial(
        run_heartbeat, manager, settings.heartbeat.interval_s, settings.heartbeat.timeout_s))
    supervisor.start("delivery-repair", app[appkeys.REPAIR].run)
    yield
    await supervisor.stop()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await app[appkeys.PRESENCE].remove(app[appkeys.NODE_ID], manager.user_ids())
            await app[appkeys.PUSH].delete(app[appkeys.NODE_ID])


async def refresh_presence(app: web.Application, health: LoopHealth) -> None:
    """Rewrite this node's presence (and keep its stream alive) every presence.refresh_interval_s; this
    also rebuilds presence after a Redis restart or fail-over."""
    settings = app[appkeys.SETTINGS]
    node_id = app[appkeys.NODE_ID]
    while True:
        await app[appkeys.PRESENCE].add(node_id, app[appkeys.MANAGER].user_ids())
        await app[appkeys.PUSH].touch(node_id)
        health.ok()
        await asyncio.sleep(settings.presence.refresh_interval_s)


async def drain_sockets(app: web.Application) -> None:
    """Shutdown: every socket gets 1001 (reconnect elsewhere after a random delay)."""
    manager = app[appkeys.MANAGER]
    count = manager.connection_count
    await manager.close_all(CLOSE_GOING_AWAY, b"server shutting down")
    logger.info("closed %d socket(s) with %d", count, CLOSE_GOING_AWAY)


def collect_young_objects_less_often() -> None:
    """CPython 3.11 collects its oldest generation in one pass over every tracked object, holding the
    event loop: at 10,000 sockets (about a million objects) 0.4–0.7 s, every 20–60 s while events flowed,
    and every delivery due meanwhile waited (p99 846 ms at 500 events/s, docs/benchmarks.md). Those
    passes are triggered by objects promoted out of the young generations, most of them short-lived
    ones (frames, tasks, messages) that merely happened to be alive at a young collection. Collecting
    the youngest generation every GC_YOUNG_THRESHOLD allocations instead of every 700 promotes far fewer
    of them: no full pass in the same 40 s at 10,000 sockets, p99 66 ms. Cycles are still collected."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_node(settings: Settings, *, reuse_port: bool = False) -> None:
    """`notify-server serve`: run until SIGTERM or SIGINT. The port is bound before anything starts,
    so an unknown host or a port in use fails at once (OSError) with nothing opened. reuse_port: one
    of `serve --processes N`'s children, sharing the port with the others (SO_REUSEPORT)."""
    collect_young_objects_less_often()
    # A deep backlog: a reconnect storm of thousands arrives at once (the kernel caps it at somaxconn).
    listening = socket.create_server((settings.server.host, settings.server.port), backlog=LISTEN_BACKLOG,
                                     reuse_port=reuse_port)
    app = create_app(settings)
    web.run_app(
        app,
        sock=listening,
        shutdown_timeout=settings.server.shutdown_timeout_s,
        print=lambda message: logger.info("%s", message.strip()),
        access_log_format='%a "%r" %s %b %Tfs',
    )
