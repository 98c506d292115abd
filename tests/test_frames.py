"""Server -> client frames: exactly the SPEC §7 shape, however they are built."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import orjson

from notify_server.core.schemas import NotificationPayloadSchema
from notify_server.storage.notifications import Notification
from notify_server.transport.frames import (
    notification_data,
    notification_frame,
    notification_frames,
    notifications_updated_frame,
    unread_count_frame,
)

SPEC_KEYS = {"notification_id", "title", "body", "priority", "action_url", "event_type", "metadata", "created_at"}


def notification(event_id: str, recipient: str, created_at: dt.datetime, body: str = "b") -> Notification:
    return Notification(
        seq=1, notification_id=str(uuid.uuid4()), recipient_id=recipient, recipient_email=f"{recipient}@example.com",
        event_id=event_id, event_type="CLAIM_REJECTED", title="T", body=body, priority="HIGH",
        action_url="/claims/1", metadata={"k": [1, "two"]}, created_at=created_at, read_at=None,
    )


def test_bulk_frames_equal_one_by_one_frames_across_events_and_times() -> None:
    t1 = dt.datetime(2026, 2, 17, 10, 0, tzinfo=dt.UTC)
    t2 = t1 + dt.timedelta(milliseconds=5)
    rows = [notification("e1", f"u{i}", t1) for i in range(3)] + [notification("e2", "u9", t2, body="other")]

    bulk = notification_frames(rows)

    assert set(bulk) == {n.notification_id for n in rows}
    for n in rows:
        assert orjson.loads(bulk[n.notification_id]) == orjson.loads(notification_frame(n))


def test_notification_frame_has_exactly_the_spec_keys_and_nothing_internal() -> None:
    n = notification("evt-secret-id", "alice", dt.datetime(2026, 2, 17, 10, 0, tzinfo=dt.UTC))

    text = notification_frame(n)
    frame = orjson.loads(text)

    assert frame["type"] == "notification"
    assert set(frame["data"]) == SPEC_KEYS
    assert frame["data"]["created_at"] == "2026-02-17T10:00:00.000Z"
    for secret in ("alice@example.com", "evt-secret-id", '"alice"'):
        assert secret not in text


def test_unread_count_frame_carries_count_and_version() -> None:
    assert orjson.loads(unread_count_frame(5, 41)) == {"type": "unread_count", "data": {"count": 5, "version": 41}}
    assert orjson.loads(unread_count_frame(0)) == {"type": "unread_count", "data": {"count": 0}}
    assert unread_count_frame(5, 42, 2) == '{"type":"unread_count","data":{"count":5,"unseen":2,"version":42}}'


def test_notifications_updated_carries_the_ids_and_only_the_flags_given() -> None:
    assert orjson.loads(notifications_updated_frame(["a", "b"], {"archived": True})) == {
        "type": "notifications_updated", "data": {"notification_ids": ["a", "b"], "archived": True}}
    assert orjson.loads(notifications_updated_frame(["a"], {"read": False})) == {
        "type": "notifications_updated", "data": {"notification_ids": ["a"], "read": False}}


def test_the_hand_built_frame_data_is_the_payload_schemas_dump() -> None:
    """frames.notification_data skips marshmallow on the push path; the schema stays the declaration."""
    at = dt.datetime(2026, 2, 17, 10, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    for n in (notification("e1", "u1", at), dataclasses.replace(notification("e2", "u2", at), action_url=None)):
        assert notification_data(n) == NotificationPayloadSchema().dump(n)
