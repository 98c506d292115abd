"""REST API (SPEC §8): authentication and the error shape of every route, the unread count; health, readiness
and metrics. The inbox's routes (list, counts, read and the other states) are notify_server.web.inbox."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2.errors
from aiohttp import web

from notify_server.auth.authenticator import REST, AuthUnavailable, TooManyAttempts, rest_credentials
from notify_server.auth.origins import origin_allowed
from notify_server.core.identity import Identity
from notify_server.core.metrics import CONTENT_TYPE_LATEST, render
from notify_server.core.stores import describe, unavailable
from notify_server.storage.migrations import APPLIED_QUERY, missing_from
from notify_server.web import appkeys

logger = logging.getLogger("notify.api")

READY_TIMEOUT_S = 2.0


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def retry_after(response: web.Response, seconds: int | None) -> web.Response:
    """The response with Retry-After, when the node knows how long (a rate limit refilling)."""
    if seconds is not None:
        response.headers["Retry-After"] = str(seconds)
    return response


_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type", 429: "too_many_requests",
    500: "internal_error", 503: "unavailable",
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_KEPT_ERROR_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def json_errors(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Every error under /api/ and /dev/ is `{"error": {"code", "message"}}`; no 5xx page escapes.

    A plain function handing back the handler's own coroutine elsewhere: a WebSocket's handler runs for
    the socket's life, and a middleware frame around it cost ~350 bytes of every idle socket."""
    if not request.path.startswith(("/api/", "/dev/")):
        return handler(request)
    return _json_errors(request, handler)


json_errors.__middleware_version__ = 1  # type: ignore[attr-defined]  # what @web.middleware marks


async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_error(exc.status, _STATUS_CODES.get(exc.status, "error"), exc.reason)
        # What the status needs beside the body: RFC 9110 requires Allow on a 405 (aiohttp sets it on the
        # exception); Retry-After and WWW-Authenticate where a handler set them.
        response.headers.update({name: exc.headers[name] for name in _KEPT_ERROR_HEADERS if name in exc.headers})
        return response
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if unavailable(exc):
            logger.warning("%s %s: store unreachable (%s)", request.method, request.path, describe(exc))
            return json_error(503, "unavailable", "storage is unreachable; try again shortly")
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal_error", "internal error")


_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


async def authenticate(request: web.Request) -> Identity:
    """The caller, by the methods of `auth.methods` (notify_server.auth.authenticator); 401 when none accepts, 503 when
    none could tell. An API key (X-API-Key) is no user credential: it authenticates nobody here."""
    authenticator = request.app[appkeys.AUTH]
    credentials = rest_credentials(request, authenticator.cookie_names)
    if credentials.from_cookie and request.method not in _SAFE_METHODS:
        # Cross-site request forgery: a foreign page's POST carries the user's cookies too (the session_id
        # cookie, or whatever cookie the proxy method forwards).
        allowed = request.app[appkeys.SETTINGS].websocket.allowed_origins
        if not origin_allowed(request.headers.get("Origin"), allowed):
            raise web.HTTPForbidden(reason="origin not allowed for a cookie-authenticated change")
    try:
        identity = await authenticator.authenticate(credentials, REST)
    except TooManyAttempts as exc:
        raise web.HTTPTooManyRequests(reason="too many attempts; retry later",
                                      headers={"Retry-After": str(exc.retry_after_s)}) from None
    except AuthUnavailable as exc:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        raise web.HTTPServiceUnavailable(reason="temporarily unavailable; try again shortly", headers=headers) from None
    if identity is None:
        request.app[appkeys.METRICS].auth_failures.labels("rest").inc()
        raise web.HTTPUnauthorized(reason="a valid session is required (cookie session_id or Bearer token)")
    return identity


async def unread_count(request: web.Request) -> web.Response:
    session = await authenticate(request)
    return web.json_response({"count": await request.app[appkeys.NOTIFICATIONS].count_unread(session.user_id)})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node_id": request.app[appkeys.NODE_ID]})


async def readyz(request: web.Request) -> web.Response:
    """200 when Postgres (migrated) and Redis answer and every background loop is up; else 503 naming
    what is not."""
    app = request.app
    checks: dict[str, Any] = {}

    async def postgres() -> str:
        async with app[appkeys.DB].connection() as conn, conn.cursor() as cur:
            try:
                await cur.execute(APPLIED_QUERY)
                applied = [row[0] for row in await cur.fetchall()]
            except psycopg2.errors.UndefinedTable:
                applied = []
        missing = missing_from(applied)
        return f"not migrated (missing {', '.join(missing)})" if missing else "ok"

    async def redis() -> str:
        await app[appkeys.REDIS].ping()
        return "ok"

    for name, check in (("postgres", postgres), ("redis", redis)):
        try:
            checks[name] = await asyncio.wait_for(check(), READY_TIMEOUT_S)
        except Exception as exc:
            checks[name] = f"unavailable ({describe(exc)})"
    down = app[appkeys.SUPERVISOR].down()
    checks["loops"] = {name: f"down ({error})" for name, error in down.items()} if down else "ok"
    ready = all(value == "ok" for value in checks.values())
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = render(request.app[appkeys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/notifications/unread-count", unread_count)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
