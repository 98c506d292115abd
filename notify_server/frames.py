"""Server -> client frames (SPEC §7), serialised once and sent as-is to every tab."""

from __future__ import annotations

import orjson

from notify_server.notifications import Notification
from notify_server.schemas import NotificationPayloadSchema

_PAYLOAD_SCHEMA = NotificationPayloadSchema()

RESYNC_FRAME = orjson.dumps({"type": "resync", "data": {}}).decode()


def notification_frame(notification: Notification) -> str:
    """`{"type": "notification", "data": {the eight keys}}`: no recipient, email or event id."""
    return orjson.dumps({"type": "notification", "data": _PAYLOAD_SCHEMA.dump(notification)}).decode()


def unread_count_frame(count: int, version: int | None = None) -> str:
    """`{"type": "unread_count", "data": {"count": N, "version": V}}`; a tab keeps the highest version."""
    data = {"count": count} if version is None else {"count": count, "version": version}
    return orjson.dumps({"type": "unread_count", "data": data}).decode()
