"""Typed keys of the aiohttp application: what handlers read from `request.app`."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from notify_server.auth.apikeys import ApiKeyRing
from notify_server.auth.authenticator import Authenticator
from notify_server.auth.session_watch import SessionWatcher
from notify_server.core.metrics import ServerMetrics
from notify_server.core.settings import Settings
from notify_server.core.supervisor import Supervisor
from notify_server.storage.db import Database
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.preferences import PreferenceStore
from notify_server.storage.sessions import SessionStore
from notify_server.transport.connections import NotificationWebSocketManager
from notify_server.transport.presence import Presence
from notify_server.transport.push import StreamPushTransport
from notify_server.transport.repair import PushGapRepair
from notify_server.transport.routing import PushRouter

SETTINGS = web.AppKey("settings", Settings)
NODE_ID = web.AppKey("node_id", str)
DB = web.AppKey("db", Database)
REDIS = web.AppKey("redis", Redis)
SESSIONS = web.AppKey("sessions", SessionStore)
NOTIFICATIONS = web.AppKey("notifications", NotificationRepository)
MANAGER = web.AppKey("manager", NotificationWebSocketManager)
PRESENCE = web.AppKey("presence", Presence)
PUSH = web.AppKey("push", StreamPushTransport)
ROUTER = web.AppKey("router", PushRouter)
SESSION_WATCHER = web.AppKey("session_watcher", SessionWatcher)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
REPAIR = web.AppKey("repair", PushGapRepair)
METRICS = web.AppKey("metrics", ServerMetrics)
AUTH = web.AppKey("auth", Authenticator)
API_KEYS = web.AppKey("api_keys", ApiKeyRing)
OPENAPI = web.AppKey("openapi", bytes)  # the serialised document of GET /api/openapi.json
PREFERENCES = web.AppKey("preferences", PreferenceStore)  # issue 19: GET/PATCH /api/preferences
