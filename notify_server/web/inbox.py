"""The user's inbox over REST (issue 18): the list and its filters, the counts of the bell, and the state
changes — read, unread, seen, archive, unarchive — on one notification, on up to BULK_MAX_IDS by id, or on
every one a filter matches (`read-all`, `seen-all`, `archive-all`).

After a change, every tab of the user on every node (the acting one included) gets
`{"type": "notifications_updated", "data": {"notification_ids": [...], <the flags that changed>}}` — or
`resync` when more than `recovery.max_replay` changed — and, when a count moved, the new `unread_count`
(coalesced per tab as every count is). The change is committed first: a Redis fault costs only the live
update, never the change.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate

from notify_server.core.constants import PRIORITIES
from notify_server.core.schemas import MAX_EVENT_TYPE_CHARS, NotificationItemSchema, first_error
from notify_server.core.stores import describe, unavailable
from notify_server.storage.inbox import ACTIONS, InboxFilter
from notify_server.storage.notifications import Changed, UnknownCursor
from notify_server.transport.frames import RESYNC_FRAME, notifications_updated_frame
from notify_server.transport.push import PushItem
from notify_server.web import appkeys
from notify_server.web.api import authenticate, json_error
from notify_server.web.bodies import read_json_body

logger = logging.getLogger("notify.inbox")

BULK_MAX_IDS = 1000
# 1,000 ids are about 40 KB of JSON (a quoted uuid and a comma each): this route alone reads past
# limits.request_max_bytes, up to this.
BULK_MAX_BODY_BYTES = 65536
FILTER_MAX_VALUES = 50  # event types or priorities in one filter
ARCHIVED_CHOICES = {"false": False, "true": True, "all": None}

_ITEM_SCHEMA = NotificationItemSchema()


class ValueList(fields.Field[tuple[str, ...]]):
    """Comma-separated values (`A,B` in a query) or a JSON list of strings; at most FILTER_MAX_VALUES."""

    def __init__(self, *, choices: tuple[str, ...] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choices = choices

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",")]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = [item.strip() for item in value]
        else:
            raise ValidationError("Not a comma-separated string or a list of strings.")
        items = [item for item in dict.fromkeys(items) if item]
        if len(items) > FILTER_MAX_VALUES:
            raise ValidationError(f"At most {FILTER_MAX_VALUES} values.")
        for item in items:
            if len(item) > MAX_EVENT_TYPE_CHARS or "\x00" in item:
                raise ValidationError(f"Not a valid value: at most {MAX_EVENT_TYPE_CHARS} characters, no NUL.")
            if self.choices is not None and item not in self.choices:
                raise ValidationError(f"{item!r} is not one of {', '.join(self.choices)}.")
        return tuple(items)


class FilterSchema(Schema):
    """The filter of the list, the counts and the `*-all` actions."""

    read = fields.Boolean(load_default=None)
    seen = fields.Boolean(load_default=None)
    event_type = ValueList(load_default=())
    priority = ValueList(choices=PRIORITIES, load_default=())


class ListQuerySchema(FilterSchema):
    class Meta:
        unknown = EXCLUDE  # cache-busters and the like are not errors

    unread_only = fields.Boolean(load_default=False)
    archived = fields.String(load_default="false", validate=validate.OneOf(list(ARCHIVED_CHOICES)))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1))
    before = fields.UUID(load_default=None)


class CountsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    event_type = ValueList(load_default=())
    priority = ValueList(choices=PRIORITIES, load_default=())


class StrictFilterSchema(FilterSchema):
    class Meta:
        unknown = RAISE


class AllBodySchema(Schema):
    """The optional body of `read-all`, `seen-all`, `archive-all`."""

    class Meta:
        unknown = RAISE

    filter = fields.Nested(StrictFilterSchema, load_default=None)


class BulkSchema(Schema):
    class Meta:
        unknown = RAISE

    action = fields.String(required=True, validate=validate.OneOf(list(ACTIONS)))
    notification_ids = fields.List(fields.UUID(), required=True, validate=validate.Length(max=BULK_MAX_IDS))


_LIST_QUERY = ListQuerySchema()
_COUNTS_QUERY = CountsQuerySchema()
_ALL_BODY = AllBodySchema()
_BULK = BulkSchema()


def _inbox_filter(loaded: dict[str, Any], archived: bool | None = False) -> InboxFilter:
    return InboxFilter(read=loaded.get("read"), seen=loaded.get("seen"), archived=archived,
                       event_types=loaded.get("event_type") or (), priorities=loaded.get("priority") or ())


def _query(request: web.Request) -> dict[str, str]:
    return {key: value for key, value in request.query.items() if value != ""}


# ---------------------------------------------------------------- reading


async def list_notifications(request: web.Request) -> web.Response:
    """`GET /api/notifications?read=&seen=&archived=&event_type=&priority=&limit=&before=` (and the older
    `unread_only=true`, which is `read=false`)."""
    session = await authenticate(request)
    try:
        params = _LIST_QUERY.load(_query(request))
    except ValidationError as exc:
        return json_error(400, "bad_request", first_error(exc.messages))
    if params["unread_only"]:
        if params["read"] is True:
            return json_error(400, "bad_request", "unread_only: contradicts read=true")
        params["read"] = False
    list_max = request.app[appkeys.SETTINGS].limits.list_max
    if params["limit"] > list_max:
        return json_error(400, "bad_request", f"limit: at most {list_max}")
    try:
        page = await request.app[appkeys.NOTIFICATIONS].list_for_user(
            session.user_id,
            limit=params["limit"],
            inbox=_inbox_filter(params, ARCHIVED_CHOICES[params["archived"]]),
            before=str(params["before"]) if params["before"] else None,
        )
    except UnknownCursor:
        return json_error(400, "bad_request", "before: not a notification id from a previous page")
    return web.json_response({"items": _ITEM_SCHEMA.dump(page.items, many=True), "next_before": page.next_before})


async def counts(request: web.Request) -> web.Response:
    """`GET /api/notifications/counts?event_type=&priority=`: `{"unread", "unseen", "total"}` of the
    notifications not archived."""
    session = await authenticate(request)
    try:
        params = _COUNTS_QUERY.load(_query(request))
    except ValidationError as exc:
        return json_error(400, "bad_request", first_error(exc.messages))
    found = await request.app[appkeys.NOTIFICATIONS].counts(
        session.user_id, event_types=params["event_type"], priorities=params["priority"])
    return web.json_response({"unread": found.unread, "unseen": found.unseen, "total": found.total})


# ---------------------------------------------------------------- changing


async def act_on_one(request: web.Request, action: str) -> web.Response:
    """`POST /api/notifications/{id}/read|unread|seen|archive|unarchive`: 200 with the item, idempotent;
    404 when it is not the caller's, whether or not it exists."""
    limit = request.app[appkeys.SETTINGS].limits.request_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    session = await authenticate(request)
    repository = request.app[appkeys.NOTIFICATIONS]
    notification_id = request.match_info["notification_id"]
    changed = await repository.change(session.user_id, action, ids=[notification_id])
    item = await repository.get(session.user_id, notification_id)
    if item is None:
        return json_error(404, "not_found", "no such notification")
    await _announce(request, session.user_id, action, changed)
    return web.json_response(_ITEM_SCHEMA.dump(item))


async def act_on_filter(request: web.Request, action: str) -> web.Response:
    """`POST /api/notifications/read-all|seen-all|archive-all` with an optional `{"filter": {...}}`
    (`read`, `seen`, `event_type`, `priority`), over the notifications not archived: `{"updated": N}`."""
    settings = request.app[appkeys.SETTINGS]
    session = await authenticate(request)
    raw = await read_json_body(request, settings.limits.request_max_bytes, "limits.request_max_bytes")
    if raw is not None and not isinstance(raw, dict):
        return json_error(400, "bad_request", 'the body must be a JSON object: {"filter": {...}}')
    try:
        body = _ALL_BODY.load(raw or {})
    except ValidationError as exc:
        return json_error(400, "bad_request", first_error(exc.messages))
    inbox = _inbox_filter(body["filter"] or {})
    changed = await request.app[appkeys.NOTIFICATIONS].change(session.user_id, action, inbox=inbox)
    await _announce(request, session.user_id, action, changed)
    return web.json_response({"updated": len(changed.notification_ids)})


async def bulk(request: web.Request) -> web.Response:
    """`POST /api/notifications/bulk` `{"action", "notification_ids": [≤ 1,000]}`: `{"updated": N}`; ids
    that are not the caller's are skipped."""
    session = await authenticate(request)
    raw = await read_json_body(request, BULK_MAX_BODY_BYTES, f"at most {BULK_MAX_IDS} ids")
    if not isinstance(raw, dict):
        return json_error(400, "bad_request", 'the body must be a JSON object: {"action", "notification_ids"}')
    try:
        body = _BULK.load(raw)
    except ValidationError as exc:
        return json_error(400, "bad_request", first_error(exc.messages))
    changed = await request.app[appkeys.NOTIFICATIONS].change(
        session.user_id, body["action"], ids=[str(nid) for nid in body["notification_ids"]])
    await _announce(request, session.user_id, body["action"], changed)
    return web.json_response({"updated": len(changed.notification_ids)})


async def _announce(request: web.Request, user_id: str, action: str, changed: Changed) -> None:
    """Every tab of the user, on every node, learns what changed and gets the new counts."""
    if not changed.notification_ids:
        return
    max_replay = request.app[appkeys.SETTINGS].recovery.max_replay
    frame = (RESYNC_FRAME if len(changed.notification_ids) > max_replay
             else notifications_updated_frame(changed.notification_ids, ACTIONS[action].flags))
    state = changed.unread
    item = PushItem(user_id, frame=frame) if state is None else PushItem(
        user_id, frame=frame, unread_count=state.count, unread_version=state.version, unseen_count=state.unseen)
    try:
        await request.app[appkeys.ROUTER].push_items([item])
    except Exception as exc:
        if not unavailable(exc):
            raise
        logger.warning("inbox change not pushed to the tabs (%s)", describe(exc))


def _on_one(action: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return await act_on_one(request, action)

    return handler


def _on_filter(action: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return await act_on_filter(request, action)

    return handler


ALL_ROUTES = {"read-all": "read", "seen-all": "seen", "archive-all": "archive"}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/notifications", list_notifications)
    app.router.add_get("/api/notifications/counts", counts)
    app.router.add_post("/api/notifications/bulk", bulk)
    for path, action in ALL_ROUTES.items():
        app.router.add_post(f"/api/notifications/{path}", _on_filter(action))
    for action in ACTIONS:
        app.router.add_post(f"/api/notifications/{{notification_id}}/{action}", _on_one(action))
