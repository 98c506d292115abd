"""Letting a live connection in and out, for the WebSocket and the event stream alike.

`admit` authenticates a connect and checks the per-user cap; a refusal carries its close code (what a
WebSocket is closed with) and its HTTP answer (what an event stream gets) declared together, so the two
transports cannot drift. `registered` is the connection's lifetime as one `async with`: registered in the
connection map (and so in presence) before anything is read from the store, watched for expiry, sent its
first frames, then — whatever way the handler leaves — counted by close code and removed from the map.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from notify_server.auth.authenticator import AuthUnavailable, TooManyAttempts, websocket_credentials
from notify_server.core.constants import (
    CLOSE_ABNORMAL,
    CLOSE_TOO_MANY_ATTEMPTS,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TRY_AGAIN,
    CLOSE_UNAUTHORIZED,
)
from notify_server.core.identity import Identity
from notify_server.core.stores import describe, unavailable
from notify_server.transport.connections import WebSocketLike
from notify_server.web import appkeys
from notify_server.web.api import json_error, retry_after
from notify_server.web.catch_up import send_first_frames

logger = logging.getLogger("notify.admission")


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connect is refused, as a close code (WebSocket) and as an HTTP answer (event stream)."""

    close_code: int
    close_reason: bytes
    status: int
    error_code: str
    message: str
    retry_after_s: int | None = None

    def response(self) -> web.Response:
        return retry_after(json_error(self.status, self.error_code, self.message), self.retry_after_s)


UNAUTHORIZED = Refusal(CLOSE_UNAUTHORIZED, b"unauthorized", 401, "unauthorized",
                       "a valid session is required (cookie session_id or ?token=)")
TOO_MANY_CONNECTIONS = Refusal(CLOSE_TOO_MANY_CONNECTIONS, b"too many connections", 429, "too_many_connections",
                               "too many connections for this user")


def too_many_attempts(retry_after_s: int | None) -> Refusal:
    return Refusal(CLOSE_TOO_MANY_ATTEMPTS, b"too many attempts", 429, "too_many_requests",
                   "too many attempts; retry later", retry_after_s)


def try_again(retry_after_s: int | None = None) -> Refusal:
    return Refusal(CLOSE_TRY_AGAIN, b"try again later", 503, "unavailable",
                   "storage is unreachable; try again shortly", retry_after_s)


async def admit(request: web.Request, surface: str) -> Identity | Refusal:
    """Who this connect is, or why it is refused (no credential a method accepts, a rate limit, the
    stores or the app's endpoint unable to tell, the user's connections over the cap)."""
    app = request.app
    authenticator = app[appkeys.AUTH]
    try:
        identity = await authenticator.authenticate(websocket_credentials(request, authenticator.cookie_names),
                                                    surface)
    except TooManyAttempts as exc:
        return too_many_attempts(exc.retry_after_s)
    except Exception as exc:
        if not (isinstance(exc, AuthUnavailable) or unavailable(exc)):
            raise
        retry_after_s = exc.retry_after_s if isinstance(exc, AuthUnavailable) else None
        if not isinstance(exc, AuthUnavailable):  # the proxy's own failures are logged where they happen
            logger.warning("cannot authenticate a %s connect now (%s)", surface, describe(exc))
        return try_again(retry_after_s)
    if identity is None:
        app[appkeys.METRICS].auth_failures.labels(surface).inc()
        return UNAUTHORIZED
    if app[appkeys.MANAGER].count(identity.user_id) >= app[appkeys.SETTINGS].limits.max_connections_per_user:
        return TOO_MANY_CONNECTIONS
    return identity


@dataclasses.dataclass(slots=True)
class Registration:
    """A live connection's record while it is in the map. `closed_with`: the code the handler closed it
    with (for the disconnect metric), when the handler closed it itself."""

    identity: Identity
    closed_with: int | None = None

    @property
    def open(self) -> bool:
        return self.closed_with is None


@contextlib.asynccontextmanager
async def registered(
    request: web.Request, identity: Identity, conn: WebSocketLike, *, since: str | None = None,
    transport: Any = None, streaming: bool = False,
) -> AsyncIterator[Registration]:
    """In the map for the body's duration. The first frames (the unread count, then the catch-up after
    `since`) go out before anything pushed meanwhile; when the store cannot answer them the connection is
    closed with 1013 and the registration is no longer `open`."""
    app = request.app
    manager = app[appkeys.MANAGER]
    registration = Registration(identity)
    try:
        # Registered (and present) before anything is read from the store, so nothing stored from now on
        # is missed; frames pushed meanwhile wait behind the first frames (count, then any catch-up).
        await manager.register_connection(identity.user_id, conn, session_hash=identity.session_hash, hold=True,
                                          transport=transport, identity=identity, streaming=streaming)
        app[appkeys.METRICS].connects.inc()
        app[appkeys.SESSION_WATCHER].watch(conn, identity.expires_at)
        try:
            await send_first_frames(request, conn, identity.user_id, since)
        except Exception as exc:
            if not unavailable(exc):
                raise
            logger.warning("store unreachable while connecting (%s): closing with %d", describe(exc),
                           CLOSE_TRY_AGAIN)
            registration.closed_with = CLOSE_TRY_AGAIN
            await conn.close(code=CLOSE_TRY_AGAIN, message=try_again().close_reason)
        yield registration
    finally:
        state = manager.state_of(conn)
        code = (registration.closed_with or (state.close_code if state else None)
                or getattr(conn, "close_code", None) or CLOSE_ABNORMAL)
        app[appkeys.METRICS].disconnected(code)
        await manager.remove_connection(identity.user_id, conn)
