"""`GET` and `PATCH /api/preferences` (issue 19): what the signed-in user chose to receive.

Same authentication as the rest of the user API. The rules — channels, the most specific switch wins,
critical types — are notify_server.core.preferences'; this module is the HTTP edge: a bounded JSON body,
one clear 400 naming the key at fault, and the effective view back after a change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from notify_server.core.preferences import PreferenceError
from notify_server.storage.preferences import PreferenceStore
from notify_server.web import appkeys
from notify_server.web.api import authenticate, json_error

PREFERENCES_PATH = "/api/preferences"


async def get_preferences(request: web.Request) -> web.Response:
    identity = await authenticate(request)
    preferences = await request.app[appkeys.PREFERENCES].get(identity.user_id)
    return web.json_response(preferences.view(request.app[appkeys.SETTINGS].templates))


async def patch_preferences(request: web.Request) -> web.Response:
    limit = request.app[appkeys.SETTINGS].limits.request_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    identity = await authenticate(request)
    body = await request.read()  # bounded by the app's client_max_size (limits.request_max_bytes): 413 over it
    try:
        patch = orjson.loads(body)  # orjson refuses nesting deeper than 1024 levels
    except orjson.JSONDecodeError:
        return json_error(400, "bad_request", "body: not JSON")
    try:
        updated = await request.app[appkeys.PREFERENCES].update(identity.user_id, patch)
    except PreferenceError as exc:
        return json_error(400, "bad_request", str(exc))
    return web.json_response(updated.view(request.app[appkeys.SETTINGS].templates))


async def preferences_ctx(app: web.Application) -> AsyncIterator[None]:
    app[appkeys.PREFERENCES] = PreferenceStore(app[appkeys.DB], app[appkeys.SETTINGS].templates)
    yield


def add_routes(app: web.Application) -> None:
    """The routes, and the store they use (after the Postgres pool: cleanup contexts run in order)."""
    app.cleanup_ctx.append(preferences_ctx)
    app.router.add_get(PREFERENCES_PATH, get_preferences)
    app.router.add_patch(PREFERENCES_PATH, patch_preferences)
