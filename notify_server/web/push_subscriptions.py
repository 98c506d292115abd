"""Web Push subscriptions over REST: the VAPID public key, subscribe and unsubscribe (issue 20).

`GET /api/push/vapid-public-key` → `{"public_key"}` (the browser's applicationServerKey);
`POST /api/push/subscriptions` with `PushSubscription.toJSON()` → 201 new, 200 known;
`DELETE /api/push/subscriptions` with `{"endpoint"}` → 204. Same user auth as the rest of the user API.
The endpoint is user input that a worker will send requests to: it is refused (400 naming the field)
unless it is on an allowed host (notify_server.core.push_endpoints), and the keys must be what a
browser makes (p256dh a 65-byte uncompressed P-256 point, auth 16 bytes). While `web_push.enabled` is
false every route answers 404.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from notify_server.core.push_endpoints import MAX_ENDPOINT_CHARS, AllowedHosts
from notify_server.core.schemas import first_error
from notify_server.core.settings import Settings
from notify_server.core.vapid_keys import application_server_key, b64url_decode, load_private_key
from notify_server.storage.push_subscriptions import PushSubscriptionStore
from notify_server.transport.webpush_encryption import AUTH_SECRET_BYTES, PUBLIC_KEY_BYTES, ua_public_key
from notify_server.web import appkeys
from notify_server.web.api import authenticate, json_error

PUBLIC_KEY_PATH = "/api/push/vapid-public-key"
SUBSCRIPTIONS_PATH = "/api/push/subscriptions"
_MAX_KEY_CHARS = 200  # base64url of 65 bytes is 87 characters; anything much longer is not a key
_LATEST_EXPIRY_MS = 253402300799999  # 9999-12-31, the last moment a timestamp column holds

PUBLIC_KEY = web.AppKey("web_push_public_key", str)
HOSTS = web.AppKey("web_push_hosts", AllowedHosts)
SUBSCRIPTIONS = web.AppKey("web_push_subscriptions", PushSubscriptionStore)


def _p256dh(value: str) -> None:
    try:
        ua_public_key(b64url_decode(value))
    except ValueError:
        raise ValidationError(f"must be a {PUBLIC_KEY_BYTES}-byte uncompressed P-256 point, base64url") from None


def _auth(value: str) -> None:
    try:
        secret = b64url_decode(value)
    except ValueError:
        secret = b""
    if len(secret) != AUTH_SECRET_BYTES:
        raise ValidationError(f"must be {AUTH_SECRET_BYTES} bytes, base64url")


class KeysSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    p256dh = fields.String(required=True, validate=[validate.Length(max=_MAX_KEY_CHARS), _p256dh])
    auth = fields.String(required=True, validate=[validate.Length(max=_MAX_KEY_CHARS), _auth])


class SubscriptionSchema(Schema):
    """`PushSubscription.toJSON()`; fields a future browser adds are ignored."""

    class Meta:
        unknown = EXCLUDE

    endpoint = fields.String(required=True, validate=validate.Length(min=1, max=MAX_ENDPOINT_CHARS))
    expirationTime = fields.Float(  # noqa: N815 (the browser's name)
        load_default=None, allow_none=True, allow_nan=False, validate=validate.Range(min=0, max=_LATEST_EXPIRY_MS)
    )
    keys = fields.Nested(KeysSchema, required=True)


class EndpointSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    endpoint = fields.String(required=True, validate=validate.Length(min=1, max=MAX_ENDPOINT_CHARS))


_SUBSCRIPTION = SubscriptionSchema()
_ENDPOINT = EndpointSchema()


def _require_enabled(request: web.Request) -> None:
    if not request.app[appkeys.SETTINGS].web_push.enabled:
        raise web.HTTPNotFound(reason="web push is off on this server (web_push.enabled)")


async def _body(request: web.Request, schema: Schema) -> dict[str, Any] | web.Response:
    """The JSON body loaded by the schema (bounded by limits.request_max_bytes), or the 400 answer."""
    try:
        raw = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return json_error(400, "bad_request", "the body must be JSON")
    if not isinstance(raw, dict):
        return json_error(400, "bad_request", "the body must be a JSON object")
    try:
        loaded: dict[str, Any] = schema.load(raw)
    except ValidationError as exc:
        return json_error(400, "bad_request", first_error(exc.messages))
    return loaded


async def vapid_public_key(request: web.Request) -> web.Response:
    _require_enabled(request)
    return web.json_response({"public_key": request.app[PUBLIC_KEY]})


async def subscribe(request: web.Request) -> web.Response:
    _require_enabled(request)
    identity = await authenticate(request)
    body = await _body(request, _SUBSCRIPTION)
    if isinstance(body, web.Response):
        return body
    problem = request.app[HOSTS].problem(body["endpoint"])
    if problem is not None:
        return json_error(400, "bad_request", f"endpoint: {problem}")
    expiration_ms = body["expirationTime"]
    expires_at = dt.datetime.fromtimestamp(expiration_ms / 1000, dt.UTC) if expiration_ms is not None else None
    created = await request.app[SUBSCRIPTIONS].subscribe(
        identity.user_id, body["endpoint"], b64url_decode(body["keys"]["p256dh"]), b64url_decode(body["keys"]["auth"]),
        expires_at, keep=request.app[appkeys.SETTINGS].web_push.max_subscriptions_per_user,
    )
    return web.json_response({"endpoint": body["endpoint"]}, status=201 if created else 200)


async def unsubscribe(request: web.Request) -> web.Response:
    _require_enabled(request)
    identity = await authenticate(request)
    body = await _body(request, _ENDPOINT)
    if isinstance(body, web.Response):
        return body
    await request.app[SUBSCRIPTIONS].unsubscribe(identity.user_id, body["endpoint"])
    return web.Response(status=204)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SUBSCRIPTIONS] = PushSubscriptionStore(app[appkeys.DB])
    yield


def add_routes(app: web.Application) -> None:
    """The routes, and what they read: the public key (loaded once) and the subscription store."""
    settings: Settings = app[appkeys.SETTINGS]
    web_push = settings.web_push
    app[PUBLIC_KEY] = application_server_key(load_private_key(web_push.vapid_private_key_file)) \
        if web_push.enabled else ""
    app[HOSTS] = AllowedHosts(web_push.allowed_hosts)
    app.cleanup_ctx.append(_store_ctx)
    app.router.add_get(PUBLIC_KEY_PATH, vapid_public_key)
    app.router.add_post(SUBSCRIPTIONS_PATH, subscribe)
    app.router.add_delete(SUBSCRIPTIONS_PATH, unsubscribe)
