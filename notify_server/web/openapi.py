"""`GET /api/openapi.json`: the OpenAPI 3.1 document of every REST route (user API, publish API, health).

Written here by hand and held to the code by tests/test_openapi.py: the document is validated, every
route of the app is in it (and nothing else), and real responses of the test suite — each documented
status of each operation — are checked against its schemas. Limits come from the node's settings, so
the document states the values this node enforces.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import orjson
from aiohttp import web

from notify_server.core.constants import PRIORITIES
from notify_server.core.preferences import CHANNELS, categories_of
from notify_server.core.push_endpoints import MAX_ENDPOINT_CHARS
from notify_server.core.schemas import MAX_EVENT_ID_CHARS, MAX_EVENT_TYPE_CHARS, MAX_RECIPIENTS, MAX_USER_ID_CHARS
from notify_server.core.settings import Settings
from notify_server.storage.inbox import ACTIONS
from notify_server.web import appkeys
from notify_server.web.inbox import ALL_ROUTES, BULK_MAX_BODY_BYTES, BULK_MAX_IDS, FILTER_MAX_VALUES
from notify_server.web.preferences import PREFERENCES_PATH
from notify_server.web.publish import API_KEY_HEADER, BATCH_MAX_EVENTS

OPENAPI_PATH = "/api/openapi.json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


_NULLABLE_STRING = {"type": ["string", "null"]}
_VALUES: Schema = {
    "oneOf": [
        {"type": "array", "maxItems": FILTER_MAX_VALUES,
         "items": {"type": "string", "maxLength": MAX_EVENT_TYPE_CHARS}},
        {"type": "string", "description": "comma-separated"},
    ],
}
_PRIORITY_VALUES: Schema = {
    "oneOf": [
        {"type": "array", "maxItems": FILTER_MAX_VALUES, "items": {"type": "string", "enum": list(PRIORITIES)}},
        {"type": "string", "description": "comma-separated: LOW, NORMAL, HIGH, URGENT"},
    ],
}

# The eight keys of a notification frame's data (SPEC §7), shared by the frame and the REST item.
_NOTIFICATION_PROPERTIES: Schema = {
    "notification_id": {"type": "string", "format": "uuid"},
    "title": {"type": "string"},
    "body": {"type": "string"},
    "priority": {"type": "string", "enum": list(PRIORITIES)},
    "action_url": _NULLABLE_STRING,
    "event_type": {"type": "string"},
    "metadata": {"type": "object"},
    "created_at": {"type": "string", "format": "date-time", "description": "UTC, milliseconds, ending in Z"},
}


def _schemas(settings: Settings) -> dict[str, Schema]:
    moment = {"type": ["string", "null"], "format": "date-time"}
    item_properties = {
        **_NOTIFICATION_PROPERTIES,
        "read_at": moment,
        "seen_at": {**moment, "description": "marking read marks seen too"},
        "archived_at": {**moment, "description": "archived: out of the inbox and its counts, still listed"},
    }
    error_body: Schema = {
        "type": "object",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "description": "machine-readable: unauthorized, not_found, invalid_event, …"},
            "message": {"type": "string", "description": "for people; names the field at fault"},
        },
    }
    return {
        "ErrorBody": error_body,
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": _ref("ErrorBody")},
        },
        "Notification": {
            "type": "object", "required": list(_NOTIFICATION_PROPERTIES), "additionalProperties": False,
            "properties": _NOTIFICATION_PROPERTIES,
            "description": "`data` of a WebSocket `notification` frame",
        },
        "NotificationItem": {
            "type": "object", "required": list(item_properties), "additionalProperties": False,
            "properties": item_properties,
        },
        "NotificationPage": {
            "type": "object", "required": ["items", "next_before"], "additionalProperties": False,
            "properties": {
                "items": {"type": "array", "items": _ref("NotificationItem"), "maxItems": settings.limits.list_max},
                "next_before": {"type": ["string", "null"], "format": "uuid",
                                "description": "pass as `before` for the next page; null on the last"},
            },
        },
        "UnreadCount": {
            "type": "object", "required": ["count"], "additionalProperties": False,
            "properties": {"count": {"type": "integer", "minimum": 0}},
        },
        "Updated": {
            "type": "object", "required": ["updated"], "additionalProperties": False,
            "properties": {"updated": {"type": "integer", "minimum": 0,
                                       "description": "notifications whose state this call changed"}},
        },
        "Counts": {
            "type": "object", "required": ["unread", "unseen", "total"], "additionalProperties": False,
            "description": "of the caller's notifications that are not archived",
            "properties": {"unread": {"type": "integer", "minimum": 0}, "unseen": {"type": "integer", "minimum": 0},
                           "total": {"type": "integer", "minimum": 0}},
        },
        "InboxFilter": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "read": {"type": "boolean"}, "seen": {"type": "boolean"},
                "event_type": _VALUES, "priority": _PRIORITY_VALUES,
            },
        },
        "FilterBody": {
            "type": "object", "additionalProperties": False,
            "properties": {"filter": _ref("InboxFilter")},
        },
        "Bulk": {
            "type": "object", "required": ["action", "notification_ids"], "additionalProperties": False,
            "properties": {
                "action": {"type": "string", "enum": list(ACTIONS)},
                "notification_ids": {"type": "array", "maxItems": BULK_MAX_IDS,
                                     "items": {"type": "string", "format": "uuid"},
                                     "description": "ids that are not the caller's are skipped"},
            },
        },
        "Recipient": {
            "type": "object", "required": ["user_id"], "additionalProperties": False,
            "properties": {
                "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_CHARS},
                "email": {"type": ["string", "null"], "format": "email", "description": "stored, never pushed"},
            },
        },
        "Event": {
            "type": "object",
            "required": ["event_id", "event_type", "recipients"],
            "additionalProperties": False,
            "properties": {
                "event_id": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID_CHARS,
                             "description": "idempotency key: the same id is never stored twice per recipient"},
                "event_type": {"type": "string", "minLength": 1, "maxLength": 200,
                               "description": "must have a template in the config"},
                "recipients": {"type": "array", "items": _ref("Recipient"), "minItems": 1,
                               "maxItems": MAX_RECIPIENTS},
                "data": {"type": "object", "description": "the template's variables (≤ 16 KB of JSON)"},
                "priority": {"type": ["string", "null"], "enum": [*PRIORITIES, None],
                             "description": "overrides the template's"},
                "action_url": {"type": ["string", "null"], "maxLength": 2000,
                               "description": "overrides the template's"},
                "metadata": {"type": "object", "description": "≤ 4 KB of JSON, delivered as-is"},
            },
        },
        "EventBatch": {
            "type": "object", "required": ["events"], "additionalProperties": False,
            "properties": {"events": {"type": "array", "items": _ref("Event"), "minItems": 1,
                                      "maxItems": BATCH_MAX_EVENTS}},
        },
        "PublishResult": {
            "type": "object", "required": ["event_id", "status"], "additionalProperties": False,
            "properties": {
                "event_id": {"type": "string"},
                "status": {"type": "string", "enum": ["queued", "duplicate"],
                           "description": "duplicate: this event id is queued or was processed within the hour"},
            },
        },
        "EventResult": {
            "type": "object", "required": ["event_id", "status"], "additionalProperties": False,
            "properties": {
                "event_id": {"type": ["string", "null"], "description": "null when the event has no usable id"},
                "status": {"type": "string", "enum": ["queued", "duplicate", "rejected"]},
                "error": _ref("ErrorBody"),
            },
        },
        "BatchResult": {
            "type": "object", "required": ["results"], "additionalProperties": False,
            "properties": {"results": {"type": "array", "items": _ref("EventResult"),
                                       "description": "one per event, in the order sent"}},
        },
        "Health": {
            "type": "object", "required": ["status", "node_id"], "additionalProperties": False,
            "properties": {"status": {"const": "ok"}, "node_id": {"type": "string"}},
        },
        "Readiness": {
            "type": "object", "required": ["ready", "postgres", "redis", "loops"], "additionalProperties": False,
            "properties": {
                "ready": {"type": "boolean"},
                "postgres": {"type": "string", "description": "ok, not migrated (missing …), unavailable (…)"},
                "redis": {"type": "string"},
                "loops": {"oneOf": [{"const": "ok"},
                                    {"type": "object", "additionalProperties": {"type": "string"},
                                     "description": "loop name: down (error)"}]},
            },
        },
    }


_USER: list[dict[str, list[str]]] = [{"sessionCookie": []}, {"bearer": []}]
_PUBLISHER: list[dict[str, list[str]]] = [{"apiKey": []}]
_UNAUTHORIZED = _error("no valid credential (which part failed is never said)")
_UNAVAILABLE = _error("Postgres, Redis or the auth proxy endpoint cannot answer now; retry with backoff")
_FORGED = _error("a cookie-authenticated change from an Origin not in websocket.allowed_origins (CSRF)")


# ---------------------------------------------------------------- web push
def _web_push_schemas() -> dict[str, Schema]:
    return {
        "VapidPublicKey": {
            "type": "object", "required": ["public_key"], "additionalProperties": False,
            "properties": {"public_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{87}$",
                                          "description": "the uncompressed P-256 point, base64url: the browser's "
                                                         "applicationServerKey"}},
        },
        "PushSubscription": {
            "type": "object", "required": ["endpoint", "keys"],
            "description": "PushSubscription.toJSON(); other properties are ignored",
            "properties": {
                "endpoint": {"type": "string", "maxLength": MAX_ENDPOINT_CHARS,
                             "description": "https:// on a host of web_push.allowed_hosts"},
                "expirationTime": {"type": ["number", "null"], "minimum": 0, "description": "ms since the epoch"},
                "keys": {"type": "object", "required": ["p256dh", "auth"], "properties": {
                    "p256dh": {"type": "string", "description": "base64url of the 65-byte uncompressed P-256 point"},
                    "auth": {"type": "string", "description": "base64url of the 16-byte auth secret"},
                }},
            },
        },
        "PushEndpoint": {
            "type": "object", "required": ["endpoint"],
            "properties": {"endpoint": {"type": "string", "maxLength": MAX_ENDPOINT_CHARS}},
        },
    }


def _web_push_paths(settings: Settings) -> dict[str, Schema]:
    too_large = _error(f"a body over {settings.limits.request_max_bytes} bytes (limits.request_max_bytes)")
    off = _error("web push is off on this server (web_push.enabled)")
    return {
        "/api/push/vapid-public-key": {"get": {
            "operationId": "vapidPublicKey", "tags": ["push"], "security": [],
            "summary": "The server's VAPID public key, for pushManager.subscribe({applicationServerKey})",
            "responses": {"200": _json(_ref("VapidPublicKey"), "the key"), "404": off},
        }},
        "/api/push/subscriptions": {
            "post": {
                "operationId": "subscribePush", "tags": ["push"], "security": _USER,
                "summary": "Push this browser the caller's notifications while no tab of theirs is open "
                           f"(at most {settings.web_push.max_subscriptions_per_user} browsers; the oldest dropped)",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("PushSubscription")}}},
                "responses": {
                    "201": _json(_ref("PushEndpoint"), "subscribed"),
                    "200": _json(_ref("PushEndpoint"), "already subscribed (keys refreshed)"),
                    "400": _error("not JSON, an endpoint not on an allowed host, or keys of the wrong size (named)"),
                    "401": _UNAUTHORIZED, "403": _FORGED, "404": off, "413": too_large, "503": _UNAVAILABLE,
                },
            },
            "delete": {
                "operationId": "unsubscribePush", "tags": ["push"], "security": _USER,
                "summary": "Stop pushing to this endpoint (only the caller's own; idempotent)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PushEndpoint")}}},
                "responses": {
                    "204": {"description": "not subscribed (any more)"},
                    "400": _error("not JSON, or no endpoint"), "401": _UNAUTHORIZED, "403": _FORGED, "404": off,
                    "413": too_large, "503": _UNAVAILABLE,
                },
            },
        },
    }


def _inbox_paths(settings: Settings) -> dict[str, Schema]:
    """The inbox (notify_server.web.inbox): list, counts, the states one at a time, by filter, in bulk."""
    too_large = _error(f"a body over {settings.limits.request_max_bytes} bytes (limits.request_max_bytes)")
    not_theirs = _error("not one of the caller's notifications (whether or not it exists)")
    list_filter = {"type": "string", "description": "comma-separated values"}
    paths: dict[str, Schema] = {
        "/api/notifications": {"get": {
            "operationId": "listNotifications", "tags": ["notifications"], "security": _USER,
            "summary": "The caller's notifications, newest first, a page at a time, filtered",
            "parameters": [
                {"name": "read", "in": "query", "schema": {"type": "boolean"}},
                {"name": "seen", "in": "query", "schema": {"type": "boolean"}},
                {"name": "archived", "in": "query",
                 "schema": {"type": "string", "enum": ["false", "true", "all"], "default": "false"},
                 "description": "false: the inbox; true: the archived ones; all: both"},
                {"name": "event_type", "in": "query", "schema": list_filter},
                {"name": "priority", "in": "query", "schema": list_filter,
                 "description": "comma-separated: LOW, NORMAL, HIGH, URGENT"},
                {"name": "unread_only", "in": "query", "schema": {"type": "boolean", "default": False},
                 "description": "true is read=false (kept for older clients)"},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": settings.limits.list_max, "default": 20}},
                {"name": "before", "in": "query", "schema": {"type": "string", "format": "uuid"},
                 "description": "the next_before of the previous page"},
            ],
            "responses": {
                "200": _json(_ref("NotificationPage"), "a page"),
                "400": _error("a bad query parameter (named)"),
                "401": _UNAUTHORIZED, "503": _UNAVAILABLE,
            },
        }},
        "/api/notifications/counts": {"get": {
            "operationId": "notificationCounts", "tags": ["notifications"], "security": _USER,
            "summary": "Unread, unseen and all of the caller's notifications not archived (the bell)",
            "parameters": [
                {"name": "event_type", "in": "query", "schema": list_filter},
                {"name": "priority", "in": "query", "schema": list_filter},
            ],
            "responses": {"200": _json(_ref("Counts"), "the counts"), "400": _error("a bad filter (named)"),
                          "401": _UNAUTHORIZED, "503": _UNAVAILABLE},
        }},
        "/api/notifications/unread-count": {"get": {
            "operationId": "unreadCount", "tags": ["notifications"], "security": _USER,
            "summary": "How many of the caller's notifications are unread (and not archived)",
            "responses": {"200": _json(_ref("UnreadCount"), "the count"), "401": _UNAUTHORIZED,
                          "503": _UNAVAILABLE},
        }},
        "/api/notifications/bulk": {"post": {
            "operationId": "bulkAction", "tags": ["notifications"], "security": _USER,
            "summary": f"One action on up to {BULK_MAX_IDS} notifications by id; every tab of the user is told",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Bulk")}}},
            "responses": {
                "200": _json(_ref("Updated"), "how many changed"),
                "400": _error(f"not JSON, an unknown action, an id that is no uuid, over {BULK_MAX_IDS} ids"),
                "401": _UNAUTHORIZED, "403": _FORGED,
                "413": _error(f"a body over {BULK_MAX_BODY_BYTES} bytes"), "503": _UNAVAILABLE,
            },
        }},
    }
    for route, action in ALL_ROUTES.items():
        paths[f"/api/notifications/{route}"] = {"post": {
            "operationId": f"{action}All", "tags": ["notifications"], "security": _USER,
            "summary": f"Mark {action} every notification of the caller not archived (that the filter matches)",
            "requestBody": {"required": False,
                            "content": {"application/json": {"schema": _ref("FilterBody")}}},
            "responses": {"200": _json(_ref("Updated"), "how many changed"),
                          "400": _error("not JSON, or a bad filter (named)"), "401": _UNAUTHORIZED,
                          "403": _FORGED, "413": too_large, "503": _UNAVAILABLE},
        }}
    for action in ACTIONS:
        paths[f"/api/notifications/{{notification_id}}/{action}"] = {"post": {
            "operationId": f"mark{action.capitalize()}", "tags": ["notifications"], "security": _USER,
            "summary": f"{action.capitalize()} one notification (idempotent); every tab of the user is told",
            "parameters": [{"name": "notification_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": _json(_ref("NotificationItem"), "the item; a state keeps its first time when set again"),
                "401": _UNAUTHORIZED, "403": _FORGED, "404": not_theirs, "413": too_large, "503": _UNAVAILABLE,
            },
        }}
    return paths


def _paths(settings: Settings) -> dict[str, Schema]:
    publish_too_large = _error(f"a body over {settings.publish.max_body_bytes} bytes (publish.max_body_bytes)")
    return {
        **_inbox_paths(settings),
        "/api/events": {"post": {
            "operationId": "publishEvent", "tags": ["publish"], "security": _PUBLISHER,
            "summary": "Enqueue one event (server to server)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Event")}}},
            "responses": {
                "202": _json(_ref("PublishResult"), "queued, or a duplicate of an event already accepted"),
                "400": _error("the body is not JSON, or the event is invalid (the message names the field)"),
                "401": _error(f"no valid {API_KEY_HEADER}"), "413": publish_too_large, "503": _UNAVAILABLE,
            },
        }},
        "/api/events/batch": {"post": {
            "operationId": "publishEvents", "tags": ["publish"], "security": _PUBLISHER,
            "summary": f"Enqueue 1 to {BATCH_MAX_EVENTS} events in one call; an invalid one does not stop the others",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EventBatch")}}},
            "responses": {
                "202": _json(_ref("BatchResult"), "one result per event, in order"),
                "400": _error("the body is not JSON, or `events` is missing, empty or too long"),
                "401": _error(f"no valid {API_KEY_HEADER}"), "413": publish_too_large, "503": _UNAVAILABLE,
            },
        }},
        OPENAPI_PATH: {"get": {
            "operationId": "openapi", "tags": ["meta"], "security": [],
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        }},
        "/healthz": {"get": {
            "operationId": "health", "tags": ["meta"], "security": [],
            "summary": "200 while the process runs",
            "responses": {"200": _json(_ref("Health"), "alive")},
        }},
        "/readyz": {"get": {
            "operationId": "ready", "tags": ["meta"], "security": [],
            "summary": "Whether Postgres (migrated), Redis and every background loop of the node are up",
            "responses": {"200": _json(_ref("Readiness"), "ready"),
                          "503": _json(_ref("Readiness"), "not ready: says what is not")},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["meta"], "security": [],
            "summary": "Prometheus metrics of this node",
            "responses": {"200": {"description": "Prometheus text exposition",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
    }


# ---------------------------------------------------------------- preferences
# GET/PATCH /api/preferences; the node's channels, categories and types are
# spelled out, so the document states exactly what this node accepts.


def _preference_schemas(settings: Settings) -> dict[str, Schema]:
    categories = categories_of(settings.templates)
    event_types = sorted(settings.templates)

    def keyed(names: list[str], value: Schema, *, all_required: bool) -> Schema:
        schema: Schema = {"type": "object", "additionalProperties": False, "properties": {n: value for n in names}}
        if all_required:
            schema["required"] = names
        return schema

    return {
        "ChannelSwitches": keyed(list(CHANNELS), {"type": "boolean"}, all_required=True),
        "ChannelChanges": {**keyed(list(CHANNELS), {"type": ["boolean", "null"]}, all_required=False),
                           "description": "true or false sets a switch; null clears it (the level above applies)"},
        "EventTypeInfo": {
            "type": "object", "required": ["category", "critical", "digest_window_s"], "additionalProperties": False,
            "properties": {
                "category": {"type": "string", "enum": categories},
                "critical": {"type": "boolean", "description": "never muted: cannot be turned off"},
                "digest_window_s": {"type": "number", "minimum": 0,
                                    "description": "> 0: a burst within this long is folded into one digest"},
            },
        },
        "Preferences": {
            "type": "object", "required": ["channels", "categories", "event_types", "catalog"],
            "additionalProperties": False,
            "description": "effective values: event type > category > channel > on; critical types always on",
            "properties": {
                "channels": _ref("ChannelSwitches"),
                "categories": keyed(categories, _ref("ChannelSwitches"), all_required=True),
                "event_types": keyed(event_types, _ref("ChannelSwitches"), all_required=True),
                "catalog": {**keyed(event_types, _ref("EventTypeInfo"), all_required=True),
                            "description": "read-only: each event type's category, whether it is critical, its digest"},
            },
        },
        "PreferencesPatch": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "channels": _ref("ChannelChanges"),
                "categories": keyed(categories, _ref("ChannelChanges"), all_required=False),
                "event_types": keyed(event_types, _ref("ChannelChanges"), all_required=False),
            },
        },
    }


def _preference_paths(settings: Settings) -> dict[str, Schema]:
    too_large = _error(f"a body over {settings.limits.request_max_bytes} bytes (limits.request_max_bytes)")
    return {PREFERENCES_PATH: {
        "get": {
            "operationId": "getPreferences", "tags": ["preferences"], "security": _USER,
            "summary": "What the caller receives: every channel, category and event type with its effective value",
            "responses": {"200": _json(_ref("Preferences"), "the effective preferences"), "401": _UNAUTHORIZED,
                          "503": _UNAVAILABLE},
        },
        "patch": {
            "operationId": "setPreferences", "tags": ["preferences"], "security": _USER,
            "summary": "Change some switches; applies to the next event any worker processes",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("PreferencesPatch")}}},
            "responses": {
                "200": _json(_ref("Preferences"), "the effective preferences after the change"),
                "400": _error("not JSON, an unknown channel, category or event type, or a critical type turned off"
                              " (the message names it); nothing is changed"),
                "401": _UNAUTHORIZED, "403": _FORGED, "413": too_large, "503": _UNAVAILABLE,
            },
        },
    }}


def _version() -> str:
    try:
        return metadata.version("notify-server")
    except metadata.PackageNotFoundError:
        return "0"


DESCRIPTION = """Real-time notifications: the REST API of one notify-server node.

Users authenticate with the methods of `auth.methods` (session table, JWT, or the app's connect proxy),
by the `session_id` cookie or `Authorization: Bearer`. Producers publish with `X-API-Key`.
The streaming transports — the WebSocket `/ws/notifications` (frames, close codes, the `refresh` frame)
and the event stream `/sse/notifications` — are described in the README."""


def build_document(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "notify-server", "version": _version(), "description": DESCRIPTION},
        "tags": [
            {"name": "notifications", "description": "the signed-in user's notifications"},
            {"name": "publish", "description": "server to server: enqueue events"},
            {"name": "push", "description": "Web Push: this browser's subscription"},
            {"name": "preferences", "description": "what the signed-in user chose to receive"},
            {"name": "meta", "description": "health, readiness, metrics, this document"},
        ],
        "paths": {**_paths(settings), **_web_push_paths(settings), **_preference_paths(settings)},
        "components": {
            "schemas": {**_schemas(settings), **_web_push_schemas(), **_preference_schemas(settings)},
            "securitySchemes": {
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "session_id",
                                  "description": "a session token or JWT in the cookie (POSTs: Origin checked)"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a session token or JWT, per auth.methods"},
                "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER,
                           "description": "from `notify-server apikey create`; its SHA-256 in publish.api_key_hashes"},
            },
        },
    }


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[appkeys.OPENAPI], content_type="application/json")


def add_routes(app: web.Application) -> None:
    app[appkeys.OPENAPI] = orjson.dumps(build_document(app[appkeys.SETTINGS]))
    app.router.add_get(OPENAPI_PATH, openapi_document)
