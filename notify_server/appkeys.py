"""Typed keys of the aiohttp application: what handlers read from `request.app`."""

from __future__ import annotations

import aiopg
from aiohttp import web
from redis.asyncio import Redis

from notify_server.connections import NotificationWebSocketManager
from notify_server.metrics import ServerMetrics
from notify_server.notifications import NotificationRepository
from notify_server.presence import Presence
from notify_server.push import StreamPushTransport
from notify_server.session_watch import SessionWatcher
from notify_server.sessions import SessionStore
from notify_server.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
NODE_ID = web.AppKey("node_id", str)
DB_POOL = web.AppKey("db_pool", aiopg.Pool)
REDIS = web.AppKey("redis", Redis)
SESSIONS = web.AppKey("sessions", SessionStore)
NOTIFICATIONS = web.AppKey("notifications", NotificationRepository)
MANAGER = web.AppKey("manager", NotificationWebSocketManager)
PRESENCE = web.AppKey("presence", Presence)
PUSH = web.AppKey("push", StreamPushTransport)
SESSION_WATCHER = web.AppKey("session_watcher", SessionWatcher)
METRICS = web.AppKey("metrics", ServerMetrics)
