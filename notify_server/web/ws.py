"""`/ws/notifications`: admit, register, send the first frames (web/admission.py), read until the socket
ends (answering the client's in-band `refresh` frames, notify_server.web.refresh)."""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from notify_server.auth.authenticator import SESSION_COOKIE, WEBSOCKET
from notify_server.auth.origins import origin_allowed
from notify_server.core.constants import CLOSE_TOO_MANY_ATTEMPTS, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED
from notify_server.core.ratelimit import TokenBucket
from notify_server.web import appkeys
from notify_server.web.admission import (
    UNAUTHORIZED,
    Refusal,
    Registration,
    admit,
    registered,
    too_many_attempts,
    try_again,
)
from notify_server.web.refresh import handle_refresh, refresh_token

logger = logging.getLogger("notify.ws")

__all__ = ["SESSION_COOKIE", "notifications_ws"]

CLOSE_HANDSHAKE_TIMEOUT_S = 3.0
# What a refresh can end in (web/refresh.py returns the code).
_CLOSE_MESSAGES = {CLOSE_UNAUTHORIZED: UNAUTHORIZED.close_reason, CLOSE_TRY_AGAIN: try_again().close_reason,
                   CLOSE_TOO_MANY_ATTEMPTS: too_many_attempts(None).close_reason}
REFRESH_LIMIT = "refresh"


async def notifications_ws(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[appkeys.SETTINGS]
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
    admitted = await admit(request, WEBSOCKET)
    if isinstance(admitted, Refusal):  # the upgrade is accepted, then closed with the code (SPEC §7)
        app[appkeys.METRICS].disconnected(admitted.close_code)
        await ws.close(code=admitted.close_code, message=admitted.close_reason)
        return ws
    async with registered(request, admitted, ws, transport=request.transport) as registration:
        if registration.open:
            await _read_until_closed(request, ws, registration)
    return ws


async def _read_until_closed(request: web.Request, ws: web.WebSocketResponse, registration: Registration) -> None:
    """Client frames: pongs recorded for the heartbeat, pings answered, `refresh` frames handled (at most
    websocket.refresh_burst, then one per refresh_interval_s), anything else read (size-limited) and
    ignored."""
    app = request.app
    manager = app[appkeys.MANAGER]
    metrics = app[appkeys.METRICS]
    user_id = registration.identity.user_id
    refreshes: TokenBucket | None = None  # made at the socket's first refresh frame (most never send one)
    async for message in ws:
        if message.type is WSMsgType.PONG:
            manager.record_pong(ws)
        elif message.type is WSMsgType.PING:
            await ws.pong(message.data)
        elif message.type is WSMsgType.ERROR:
            break
        elif message.type is WSMsgType.TEXT and (token := refresh_token(message.data)) is not None:
            if refreshes is None:
                limits = app[appkeys.SETTINGS].websocket
                refreshes = TokenBucket(limits.refresh_burst, 1.0 / limits.refresh_interval_s)
            if refreshes.take():
                registration.closed_with = await handle_refresh(app, ws, user_id, token, request.remote)
            else:
                logger.info("refresh refused: over websocket.refresh_*; closing with %d", CLOSE_TOO_MANY_ATTEMPTS)
                metrics.rate_limited.labels(REFRESH_LIMIT).inc()
                metrics.refreshes.labels("limited").inc()
                registration.closed_with = CLOSE_TOO_MANY_ATTEMPTS
            if registration.closed_with is not None:
                await ws.close(code=registration.closed_with, message=_CLOSE_MESSAGES[registration.closed_with])
                break
