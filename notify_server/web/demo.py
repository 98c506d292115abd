"""Dev-only endpoints behind the demo page: sign in as anyone, emit any event. Never under `serve`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from notify_server.auth.origins import origin_allowed
from notify_server.auth.revocations import publish_revocation
from notify_server.core.schemas import MAX_USER_ID_CHARS, first_error
from notify_server.ingest.events import EventRejected, parse_event
from notify_server.ingest.producer import enqueue_event
from notify_server.web import appkeys
from notify_server.web.api import json_error
from notify_server.web.ws import SESSION_COOKIE

DEMO_DIR = Path(__file__).resolve().parent.parent / "static" / "demo"
DEMO_SESSION_TTL_S = 12 * 3600


class DevStatus:
    """What `notify-server dev` knows and the page must show: embedded servers that stopped (name ->
    one line saying so; notify_server.ops.dev fills it)."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}


DEV_STATUS = web.AppKey("dev_status", DevStatus)


class SignInSchema(Schema):
    class Meta:
        unknown = RAISE

    user_id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_USER_ID_CHARS))


class EmitSchema(Schema):
    class Meta:
        unknown = RAISE

    event_type = fields.String(required=True)
    to = fields.List(fields.String(validate=validate.Length(min=1, max=MAX_USER_ID_CHARS)), required=True,
                     validate=validate.Length(min=1, max=100))
    data = fields.Dict(keys=fields.String(), load_default=dict)


def _refuse_cross_site(request: web.Request) -> None:
    """The demo signs anyone in and emits anything: a foreign page must not be able to make it do so.
    A cross-site form cannot send JSON without a CORS preflight (which we never answer), and a page of
    another origin is refused outright."""
    if not origin_allowed(request.headers.get("Origin"), request.app[appkeys.SETTINGS].websocket.allowed_origins):
        raise web.HTTPForbidden(reason="origin not allowed")
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="send JSON (Content-Type: application/json)")


async def _json_body(request: web.Request, schema: Schema) -> dict[str, Any]:
    _refuse_cross_site(request)
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(reason="body must be JSON") from None
    try:
        loaded: dict[str, Any] = schema.load(body if isinstance(body, dict) else {"": body})
        return loaded
    except ValidationError as exc:
        raise web.HTTPBadRequest(reason=first_error(exc.messages)) from None


async def sign_in(request: web.Request) -> web.Response:
    body = await _json_body(request, SignInSchema())
    new = await request.app[appkeys.SESSIONS].create(body["user_id"], DEMO_SESSION_TTL_S)
    response = web.json_response({"user_id": new.user_id})
    response.set_cookie(SESSION_COOKIE, new.token, httponly=True, samesite="Lax", path="/",
                        max_age=DEMO_SESSION_TTL_S)
    return response


async def sign_out(request: web.Request) -> web.Response:
    _refuse_cross_site(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        token_hash = await request.app[appkeys.SESSIONS].revoke(token)
        if token_hash:
            await publish_revocation(request.app[appkeys.REDIS], token_hash)
    response = web.json_response({"signed_out": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def whoami(request: web.Request) -> web.Response:
    session = await request.app[appkeys.SESSIONS].validate(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return json_error(401, "unauthorized", "not signed in")
    return web.json_response({"user_id": session.user_id})


async def templates(request: web.Request) -> web.Response:
    found = {
        event_type: {
            "title": t.title.source,
            "body": t.body.source,
            "variables": sorted(t.title.names | t.body.names | (t.action_url.names if t.action_url else frozenset())),
        }
        for event_type, t in request.app[appkeys.SETTINGS].templates.items()
    }
    return web.json_response({"templates": found})


async def emit(request: web.Request) -> web.Response:
    body = await _json_body(request, EmitSchema())
    settings = request.app[appkeys.SETTINGS]
    event = {
        "event_id": f"demo-{uuid.uuid4().hex}",
        "event_type": body["event_type"],
        "recipients": [{"user_id": user_id} for user_id in body["to"]],
        "data": body["data"],
    }
    try:
        parse_event(event, settings.templates)
    except EventRejected as exc:
        return json_error(400, "bad_request", str(exc))
    await enqueue_event(request.app[appkeys.REDIS], event, queue_name=settings.queues.events)
    return web.json_response({"event_id": event["event_id"]}, status=202)


async def status(request: web.Request) -> web.Response:
    """`GET /dev/status`: {"problems": [one line per stopped embedded server]}; the page shows them."""
    problems = request.app[DEV_STATUS].problems
    return web.json_response({"problems": [problems[name] for name in sorted(problems)]})


async def demo_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(DEMO_DIR / "index.html")


def add_demo_routes(app: web.Application) -> None:
    app.router.add_get("/", demo_page)
    app.router.add_static("/demo/", DEMO_DIR)
    app.router.add_post("/dev/session", sign_in)
    app.router.add_post("/dev/logout", sign_out)
    app.router.add_get("/dev/whoami", whoami)
    app.router.add_get("/dev/templates", templates)
    app.router.add_post("/dev/emit", emit)
    app[DEV_STATUS] = DevStatus()
    app.router.add_get("/dev/status", status)
