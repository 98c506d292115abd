"""`/ws/notifications`: authenticate, register, send the unread count, read until the socket ends
(answering the client's in-band `refresh` frames, notify_server.web.refresh)."""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from notify_server.auth.authenticator import (
    SESSION_COOKIE,
    WEBSOCKET,
    AuthUnavailable,
    TooManyAttempts,
    websocket_credentials,
)
from notify_server.auth.origins import origin_allowed
from notify_server.core.constants import (
    CLOSE_ABNORMAL,
    CLOSE_TOO_MANY_ATTEMPTS,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
)
from notify_server.core.ratelimit import TokenBucket
from notify_server.core.stores import describe, unavailable
from notify_server.storage.notifications import NotificationRepository, UnknownCursor
from notify_server.transport.connections import WebSocketLike
from notify_server.transport.frames import RESYNC_FRAME, notification_frame, unread_count_frame
from notify_server.web import appkeys
from notify_server.web.refresh import handle_refresh, refresh_token

logger = logging.getLogger("notify.ws")

__all__ = ["SESSION_COOKIE", "notifications_ws"]

CLOSE_HANDSHAKE_TIMEOUT_S = 3.0
_CLOSE_MESSAGES = {CLOSE_UNAUTHORIZED: b"unauthorized", CLOSE_TRY_AGAIN: b"try again later",
                   CLOSE_TOO_MANY_ATTEMPTS: b"too many attempts"}
REFRESH_LIMIT = "refresh"


async def send_first_frames(
    request: web.Request, ws: WebSocketLike, user_id: str, since: str | None = None
) -> None:
    """The unread count, then (with `since`, default ?since=) the missed notifications, then whatever
    was held."""
    app = request.app
    settings = app[appkeys.SETTINGS]
    repository = app[appkeys.NOTIFICATIONS]
    unread = await repository.unread_state(user_id)
    first_frames = [unread_count_frame(unread.count, unread.version)]
    replayed: set[str] = set()
    since = since or request.query.get("since")
    if since:
        first_frames += await catch_up(repository, user_id, since, settings.recovery.max_replay, replayed)
    app[appkeys.MANAGER].release(
        ws, first_frames, unread_version=unread.version, already_sent=replayed,
        already_sent_ttl_s=settings.push.job_expiry_s,
    )


async def catch_up(
    repository: NotificationRepository, user_id: str, since: str, max_replay: int, replayed: set[str]
) -> list[str]:
    """Frames of the notifications stored after `since`, oldest first; a single `resync` frame when
    `since` is unknown or more than max_replay were missed (the client then refetches over REST)."""
    try:
        missed = await repository.list_since(user_id, since, limit=max_replay + 1)
    except UnknownCursor:
        return [RESYNC_FRAME]
    if len(missed) > max_replay:
        return [RESYNC_FRAME]
    replayed.update(n.notification_id for n in missed)
    return [notification_frame(n) for n in missed]


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

    authenticator = app[appkeys.AUTH]
    try:
        identity = await authenticator.authenticate(
            websocket_credentials(request, authenticator.cookie_names), WEBSOCKET
        )
    except TooManyAttempts:
        metrics.disconnected(CLOSE_TOO_MANY_ATTEMPTS)
        await ws.close(code=CLOSE_TOO_MANY_ATTEMPTS, message=b"too many attempts")
        return ws
    except Exception as exc:
        if not (isinstance(exc, AuthUnavailable) or unavailable(exc)):
            raise
        if not isinstance(exc, AuthUnavailable):
            logger.warning("session store unreachable (%s): closing with %d", describe(exc), CLOSE_TRY_AGAIN)
        metrics.disconnected(CLOSE_TRY_AGAIN)
        await ws.close(code=CLOSE_TRY_AGAIN, message=b"try again later")
        return ws
    if identity is None:
        metrics.auth_failures.labels("websocket").inc()
        metrics.disconnected(CLOSE_UNAUTHORIZED)
        await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
        return ws

    manager = app[appkeys.MANAGER]
    if manager.count(identity.user_id) >= settings.limits.max_connections_per_user:
        metrics.disconnected(CLOSE_TOO_MANY_CONNECTIONS)
        await ws.close(code=CLOSE_TOO_MANY_CONNECTIONS, message=b"too many connections")
        return ws

    # Registered (and present) before anything is read from the store, so nothing stored from now on
    # is missed; frames pushed meanwhile wait behind the first frames (count, then any catch-up).
    closed_with: int | None = None
    refreshes: TokenBucket | None = None  # made at the socket's first refresh frame (most never send one)
    try:
        await manager.register_connection(identity.user_id, ws, session_hash=identity.session_hash, hold=True,
                                          transport=request.transport, identity=identity)
        metrics.connects.inc()
        app[appkeys.SESSION_WATCHER].watch(ws, identity.expires_at)
        try:
            await send_first_frames(request, ws, identity.user_id)
        except Exception as exc:
            if not unavailable(exc):
                raise
            logger.warning("store unreachable while connecting (%s): closing with %d", describe(exc),
                           CLOSE_TRY_AGAIN)
            closed_with = CLOSE_TRY_AGAIN
            await ws.close(code=CLOSE_TRY_AGAIN, message=b"try again later")
            return ws
        async for message in ws:
            if message.type is WSMsgType.PONG:
                manager.record_pong(ws)
            elif message.type is WSMsgType.PING:
                await ws.pong(message.data)
            elif message.type is WSMsgType.ERROR:
                break
            elif message.type is WSMsgType.TEXT and (token := refresh_token(message.data)) is not None:
                if refreshes is None:
                    limits = settings.websocket
                    refreshes = TokenBucket(limits.refresh_burst, 1.0 / limits.refresh_interval_s)
                if refreshes.take():
                    closed_with = await handle_refresh(app, ws, identity.user_id, token, request.remote)
                else:
                    logger.info("refresh refused: over websocket.refresh_*; closing with %d", CLOSE_TOO_MANY_ATTEMPTS)
                    metrics.rate_limited.labels(REFRESH_LIMIT).inc()
                    metrics.refreshes.labels("limited").inc()
                    closed_with = CLOSE_TOO_MANY_ATTEMPTS
                if closed_with is not None:
                    await ws.close(code=closed_with, message=_CLOSE_MESSAGES[closed_with])
                    break
            # Other frames from clients carry nothing we need: read (size-limited) and ignored.
    finally:
        state = manager.state_of(ws)
        code = closed_with or (state.close_code if state else None) or ws.close_code or CLOSE_ABNORMAL
        metrics.disconnected(code)
        await manager.remove_connection(identity.user_id, ws)
    return ws
