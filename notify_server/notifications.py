"""The notification repository (SPEC §6 `notifications`) over aiopg."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import aiopg
import orjson

_COLUMNS = (
    "seq, notification_id, recipient_id, recipient_email, event_id, event_type, title, body,"
    " priority, action_url, metadata, created_at, read_at"
)


@dataclasses.dataclass(frozen=True)
class Notification:
    seq: int
    notification_id: str
    recipient_id: str
    recipient_email: str | None
    event_id: str
    event_type: str
    title: str
    body: str
    priority: str
    action_url: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime
    read_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Notification:
        values = list(row)
        values[1] = str(values[1])
        return cls(*values)


@dataclasses.dataclass(frozen=True)
class Recipient:
    user_id: str
    email: str | None = None


@dataclasses.dataclass(frozen=True)
class NewNotifications:
    """What one event stores: the same rendered text for every recipient."""

    event_id: str
    event_type: str
    title: str
    body: str
    priority: str
    action_url: str | None
    metadata: dict[str, Any]
    recipients: Sequence[Recipient]


@dataclasses.dataclass(frozen=True)
class Page:
    items: list[Notification]
    next_before: str | None


class UnknownCursor(LookupError):
    """`before` / `since` names no notification of this user."""


def _uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


class NotificationRepository:
    def __init__(self, pool: aiopg.Pool) -> None:
        self._pool = pool

    async def insert_many(self, new: NewNotifications) -> list[Notification]:
        """Store one row per recipient in one transaction; rows that exist (same event and recipient)
        are left as they are. Returns only the rows this call inserted."""
        ids = [r.user_id for r in new.recipients]
        emails = [r.email for r in new.recipients]
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            async with cur.begin():
                await cur.execute(
                    f"INSERT INTO notifications (recipient_id, recipient_email, event_id, event_type,"
                    f" title, body, priority, action_url, metadata)"
                    f" SELECT r.id, r.email, %(event_id)s, %(event_type)s, %(title)s, %(body)s,"
                    f" %(priority)s, %(action_url)s, %(metadata)s::jsonb"
                    f" FROM unnest(%(ids)s::text[], %(emails)s::text[]) AS r(id, email)"
                    f" ON CONFLICT (event_id, recipient_id) DO NOTHING"
                    f" RETURNING {_COLUMNS}",
                    {
                        "event_id": new.event_id,
                        "event_type": new.event_type,
                        "title": new.title,
                        "body": new.body,
                        "priority": new.priority,
                        "action_url": new.action_url,
                        "metadata": orjson.dumps(new.metadata).decode(),
                        "ids": ids,
                        "emails": emails,
                    },
                )
                rows = await cur.fetchall()
        return [Notification.from_row(row) for row in rows]

    async def count_unread(self, user_id: str) -> int:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT count(*) FROM notifications WHERE recipient_id = %s AND read_at IS NULL", (user_id,)
            )
            (count,) = await cur.fetchone()
        return int(count)

    async def count_unread_many(self, user_ids: Sequence[str]) -> dict[str, int]:
        """Unread counts of several users in one query (users with none are 0)."""
        if not user_ids:
            return {}
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT recipient_id, count(*) FROM notifications"
                " WHERE recipient_id = ANY(%s) AND read_at IS NULL GROUP BY recipient_id",
                (list(user_ids),),
            )
            counts = {row[0]: int(row[1]) for row in await cur.fetchall()}
        return {user_id: counts.get(user_id, 0) for user_id in user_ids}

    async def _seq_of(self, cur: Any, user_id: str, notification_id: str) -> int:
        nid = _uuid_or_none(notification_id)
        if nid is None:
            raise UnknownCursor(notification_id)
        await cur.execute(
            "SELECT seq FROM notifications WHERE notification_id = %s AND recipient_id = %s", (nid, user_id)
        )
        row = await cur.fetchone()
        if row is None:
            raise UnknownCursor(notification_id)
        return int(row[0])

    async def list_for_user(
        self, user_id: str, *, limit: int, unread_only: bool = False, before: str | None = None
    ) -> Page:
        """Newest first; `before` is the id of the last item of the previous page (UnknownCursor if it is
        not one of this user's)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            clauses = ["recipient_id = %(user)s"]
            params: dict[str, Any] = {"user": user_id, "limit": limit + 1}
            if unread_only:
                clauses.append("read_at IS NULL")
            if before is not None:
                params["before"] = await self._seq_of(cur, user_id, before)
                clauses.append("seq < %(before)s")
            await cur.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE {' AND '.join(clauses)}"
                f" ORDER BY seq DESC LIMIT %(limit)s",
                params,
            )
            rows = await cur.fetchall()
        items = [Notification.from_row(row) for row in rows[:limit]]
        next_before = items[-1].notification_id if len(rows) > limit else None
        return Page(items=items, next_before=next_before)

    async def list_since(self, user_id: str, since: str, *, limit: int) -> list[Notification]:
        """This user's notifications stored after `since`, oldest first, at most `limit`."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            seq = await self._seq_of(cur, user_id, since)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE recipient_id = %s AND seq > %s"
                f" ORDER BY seq ASC LIMIT %s",
                (user_id, seq, limit),
            )
            rows = await cur.fetchall()
        return [Notification.from_row(row) for row in rows]

    async def mark_read(self, user_id: str, notification_id: str) -> Notification | None:
        """Mark one of this user's notifications read (idempotent: read_at keeps its first value).
        None when the id is not one of this user's, whether or not it exists."""
        nid = _uuid_or_none(notification_id)
        if nid is None:
            return None
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                f"UPDATE notifications SET read_at = coalesce(read_at, now())"
                f" WHERE notification_id = %s AND recipient_id = %s RETURNING {_COLUMNS}",
                (nid, user_id),
            )
            row = await cur.fetchone()
        return Notification.from_row(row) if row else None

    async def mark_all_read(self, user_id: str) -> int:
        """Mark every unread notification of this user read; returns how many changed."""
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "UPDATE notifications SET read_at = now() WHERE recipient_id = %s AND read_at IS NULL", (user_id,)
            )
            return int(cur.rowcount)
