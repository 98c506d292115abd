"""The one frame a client may send: `{"type": "refresh", "token": "<new credential>"}`.

Before its credential expires, a client sends a new one in band instead of reconnecting. The new
credential goes through the same methods as a connect (`auth.methods`, as a bearer token). When it
validates for the *same* user, the socket moves onto it (new expiry timer; for a session, revocations of
the new session apply) and gets `{"type": "refreshed", "data": {"expires_at": …}}`; otherwise the
socket is closed with 4001 (1013 when the stores or the app's endpoint cannot tell). Every other frame
is read and ignored, as before. A refresh is handled by the socket's own read loop, so one client has at
most one in flight; how many a socket may send is bounded (websocket.refresh_*, counted by the handler in
notify_server.web.ws: over it, close 4029).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from notify_server.auth.authenticator import WEBSOCKET, AuthUnavailable, TooManyAttempts, refresh_credentials
from notify_server.core.constants import CLOSE_TOO_MANY_ATTEMPTS, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED
from notify_server.core.stores import describe, unavailable
from notify_server.transport.connections import WebSocketLike
from notify_server.transport.frames import refreshed_frame
from notify_server.web import appkeys

logger = logging.getLogger("notify.refresh")

REFRESH = "refresh"


def refresh_token(text: str) -> str | None:
    """The credential of a refresh frame ("" when the frame is a refresh without a usable one); None
    when the text is not a refresh frame at all (ignored, as every other client frame)."""
    try:
        frame: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(frame, dict) or frame.get("type") != REFRESH:
        return None
    token = frame.get("token")
    return token if isinstance(token, str) else ""


async def handle_refresh(
    app: web.Application, ws: WebSocketLike, user_id: str, token: str, client: str | None = None
) -> int | None:
    """Apply a refresh frame; returns the close code when the socket must close (4001, 1013, 4029), else
    None. `client`: the socket's peer address (the proxy method's per-client limit counts by it)."""
    metrics = app[appkeys.METRICS]
    if not token:
        logger.info("refresh refused: the frame carries no token")
        metrics.refreshes.labels("unauthorized").inc()
        return CLOSE_UNAUTHORIZED
    try:
        identity = await app[appkeys.AUTH].authenticate(refresh_credentials(token, client), WEBSOCKET)
    except TooManyAttempts:
        metrics.refreshes.labels("limited").inc()
        return CLOSE_TOO_MANY_ATTEMPTS
    except AuthUnavailable:
        metrics.refreshes.labels("unavailable").inc()
        return CLOSE_TRY_AGAIN
    except Exception as exc:
        if not unavailable(exc):
            raise
        logger.warning("refresh undecided: store unreachable (%s)", describe(exc))
        metrics.refreshes.labels("unavailable").inc()
        return CLOSE_TRY_AGAIN
    if identity is None:
        metrics.refreshes.labels("unauthorized").inc()
        return CLOSE_UNAUTHORIZED
    if identity.user_id != user_id:
        logger.info("refresh refused: the new credential is another user's")
        metrics.refreshes.labels("unauthorized").inc()
        return CLOSE_UNAUTHORIZED
    manager = app[appkeys.MANAGER]
    if not manager.set_identity(ws, identity):
        return None  # closing already
    app[appkeys.SESSION_WATCHER].watch(ws, identity.expires_at)
    manager.send_to(ws, refreshed_frame(identity.expires_at))
    metrics.refreshes.labels("ok").inc()
    return None
