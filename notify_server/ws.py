"""`/ws/notifications`: authenticate, register, send the unread count, read until the socket ends."""

from __future__ import annotations

import logging
import time

from aiohttp import WSMsgType, web

from notify_server import appkeys
from notify_server.frames import unread_count_frame
from notify_server.constants import CLOSE_TOO_MANY_CONNECTIONS, CLOSE_UNAUTHORIZED
from notify_server.origins import origin_allowed

logger = logging.getLogger("notify.ws")

SESSION_COOKIE = "session_id"
CLOSE_HANDSHAKE_TIMEOUT_S = 3.0


def token_from_request(request: web.Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or request.query.get("token") or None


async def notifications_ws(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[appkeys.SETTINGS]
    metrics = app[appkeys.METRICS]
    if not origin_allowed(request.headers.get("Origin"), settings.websocket.allowed_origins):
        # Cross-site WebSocket hijacking: a foreign page riding on the user's cookie.
        raise web.HTTPForbidden(text="origin not allowed")

    ws = web.WebSocketResponse(
        autoping=False,  # pongs are recorded for the heartbeat sweep; pings answered below
        compress=False,  # permessage-deflate costs ~90 KB per socket for frames of a few hundred bytes
        max_msg_size=settings.websocket.max_frame_bytes,
        timeout=CLOSE_HANDSHAKE_TIMEOUT_S,
    )
    await ws.prepare(request)

    session = await app[appkeys.SESSIONS].validate(token_from_request(request))
    if session is None:
        metrics.auth_failures.labels("websocket").inc()
        metrics.disconnects.labels(str(CLOSE_UNAUTHORIZED)).inc()
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return ws

    manager = app[appkeys.MANAGER]
    if manager.count(session.user_id) >= settings.limits.max_connections_per_user:
        metrics.disconnects.labels(str(CLOSE_TOO_MANY_CONNECTIONS)).inc()
        await ws.close(code=CLOSE_TOO_MANY_CONNECTIONS, message=b"too many connections")
        return ws

    # Registered (and present) before the count is read, so nothing stored from now on is missed;
    # frames pushed meanwhile wait behind the first unread_count frame.
    state = await manager.register_connection(session.user_id, ws, session_hash=session.token_hash, hold=True)
    state.transport = request.transport
    metrics.connects.inc()
    try:
        app[appkeys.SESSION_WATCHER].watch(ws, state, session.expires_at)
        count = await app[appkeys.NOTIFICATIONS].count_unread(session.user_id)
        manager.release(ws, unread_count_frame(count))
        async for message in ws:
            if message.type is WSMsgType.PONG:
                state.last_pong_at = time.monotonic()
            elif message.type is WSMsgType.PING:
                await ws.pong(message.data)
            elif message.type is WSMsgType.ERROR:
                break
            # Text and binary frames from clients carry nothing we need: read (size-limited) and ignored.
    finally:
        await manager.remove_connection(session.user_id, ws)
        metrics.disconnects.labels(str(ws.close_code or 1006)).inc()
    return ws
