"""The notification repository (SPEC §6 `notifications`) over aiopg."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg2

from notify_server.core.batching import BatchLoader
from notify_server.storage.db import Database

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
class UnreadState:
    """A user's unread count and its version (grows with every change of that user's count)."""

    count: int
    version: int


@dataclasses.dataclass(frozen=True)
class StoredEvent:
    notifications: list[Notification]  # only the rows this call inserted
    unread: dict[str, UnreadState]  # the new state of each recipient that got a row


@dataclasses.dataclass(frozen=True)
class ReadResult:
    notification: Notification
    unread: UnreadState | None  # None when it was already read (nothing changed)


@dataclasses.dataclass(frozen=True)
class Page:
    items: list[Notification]
    next_before: str | None


@dataclasses.dataclass(frozen=True)
class Precondition:
    """A condition of a store, checked by the store's own statement (`WHERE <sql>`): when it raises
    `sqlstate`, the statement fails whole, nothing is stored, and the store raises PreconditionFailed.

    The store function's rows are filtered by it, so whether Postgres checks it once before the store (a
    constant, STABLE condition: a one-time filter, as it plans it) or on each row the store inserted, a
    failing check never leaves a row behind."""

    sql: str  # a boolean SQL expression, %s placeholders only
    params: tuple[Any, ...]
    sqlstate: str


class PreconditionFailed(Exception):
    """A store's precondition did not hold: nothing was stored."""


class UnknownCursor(LookupError):
    """`before` / `since` names no notification of this user."""


def _uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


class NotificationRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Concurrent reads of unread state (sockets connecting at once) share one query.
        self._unread: BatchLoader[str, UnreadState] = BatchLoader(self.unread_states, default=UnreadState(0, 0))

    async def store_events(
        self, events: Sequence[NewNotifications], *, precondition: Precondition | None = None
    ) -> list[StoredEvent]:
        """Store one row per (event, recipient) for several events in one transaction and bump the
        recipients' unread counters; one StoredEvent per event, in order. Rows that exist (same event
        and recipient) are left as they are and counted nowhere: idempotent.

        One round trip: the database function `notify_store_events` (migrations/0005) does it all, with
        the counters bumped *before* the rows are inserted (each recipient's counter lock taken first, in
        user order: concurrent batches cannot deadlock, and one user's rows get their seq in commit
        order, so a catch-up "after seq N" never skips a row committed later with a lower seq).
        Only seq, id and created_at come back per row; the rest is already in memory.

        A `precondition` rides in the same statement (the worker checks there that no recipient holds
        preferences: nothing extra in the common case, storage/preferences.py)."""
        if not events:
            return []
        async with self._db.connection() as conn, conn.cursor() as cur:
            return await self.store_events_on(cur, events, precondition=precondition)

    @staticmethod
    async def store_events_on(
        cur: Any, events: Sequence[NewNotifications], *, precondition: Precondition | None = None
    ) -> list[StoredEvent]:
        """store_events with `cur`, inside the caller's transaction when it has one (a digest is stored in
        the transaction that takes its held events, so both happen or neither)."""
        if not events:
            return []
        by_id = {new.event_id: new for new in events}
        event_ids = list(by_id)
        position = {event_id: i for i, event_id in enumerate(event_ids, start=1)}
        recipients = [(new.event_id, r) for new in by_id.values() for r in new.recipients]
        sql = ("SELECT * FROM notify_store_events(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
               " %s::text[], %s::text[], %s::text[], %s::text[], %s::int[])")
        params: tuple[Any, ...] = (
            event_ids,
            [by_id[e].event_type for e in event_ids],
            [by_id[e].title for e in event_ids],
            [by_id[e].body for e in event_ids],
            [by_id[e].priority for e in event_ids],
            [by_id[e].action_url for e in event_ids],
            [orjson.dumps(by_id[e].metadata).decode() for e in event_ids],
            [r.user_id for _, r in recipients],
            [r.email for _, r in recipients],
            [position[event_id] for event_id, _ in recipients],
        )
        if precondition is not None:
            sql, params = f"{sql} WHERE {precondition.sql}", (*params, *precondition.params)
        try:
            await cur.execute(sql, params)
        except psycopg2.Error as exc:
            if precondition is not None and exc.pgcode == precondition.sqlstate:
                raise PreconditionFailed(precondition.sqlstate) from exc
            raise
        rows = await cur.fetchall()
        by_event: dict[str, list[Notification]] = {}
        states: dict[str, UnreadState] = {}
        for seq, notification_id, event_id, recipient_id, email, created_at, unread, version in rows:
            new = by_id[event_id]
            by_event.setdefault(event_id, []).append(Notification(
                seq=seq, notification_id=str(notification_id), recipient_id=recipient_id, recipient_email=email,
                event_id=event_id, event_type=new.event_type, title=new.title, body=new.body,
                priority=new.priority, action_url=new.action_url, metadata=new.metadata,
                created_at=created_at, read_at=None,
            ))
            states[recipient_id] = UnreadState(int(unread), int(version))
        results = []
        for new in events:
            stored = by_event.get(new.event_id, [])
            results.append(StoredEvent(notifications=stored, unread={n.recipient_id: states[n.recipient_id]
                                                                      for n in stored}))
        return results

    async def of_events(self, event_ids: Sequence[str]) -> list[Notification]:
        """Every stored row of these events (a retried event pushes what an earlier try stored)."""
        if not event_ids:
            return []
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE event_id = ANY(%s) ORDER BY seq", (list(event_ids),)
            )
            return [Notification.from_row(row) for row in await cur.fetchall()]

    async def newest_since(
        self, user_ids: Sequence[str], since: dt.datetime, *, per_user: int
    ) -> dict[str, list[Notification]]:
        """Each user's notifications created at or after `since`: at most `per_user` of the newest (one
        index range per user), oldest first. A user with `per_user` of them may have had more."""
        if not user_ids:
            return {}
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM unnest(%s::text[]) AS u(id) CROSS JOIN LATERAL ("
                f"  SELECT {_COLUMNS} FROM notifications WHERE recipient_id = u.id ORDER BY seq DESC LIMIT %s"
                f") AS n WHERE n.created_at >= %s ORDER BY n.seq",
                (list(user_ids), per_user, since),
            )
            rows = [Notification.from_row(row) for row in await cur.fetchall()]
        found: dict[str, list[Notification]] = {}
        for n in rows:
            found.setdefault(n.recipient_id, []).append(n)
        return found

    async def count_unread(self, user_id: str) -> int:
        return (await self.unread_state(user_id)).count

    async def unread_state(self, user_id: str) -> UnreadState:
        return await self._unread.load(user_id)

    async def unread_states(self, user_ids: Sequence[str]) -> dict[str, UnreadState]:
        """Unread state of several users in one query (users with none are 0, version 0)."""
        if not user_ids:
            return {}
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT user_id, unread, version FROM unread_counters WHERE user_id = ANY(%s)", (list(user_ids),)
            )
            found = {row[0]: UnreadState(int(row[1]), int(row[2])) for row in await cur.fetchall()}
        return {user_id: found.get(user_id, UnreadState(0, 0)) for user_id in user_ids}

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
        async with self._db.connection() as conn, conn.cursor() as cur:
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
        async with self._db.connection() as conn, conn.cursor() as cur:
            seq = await self._seq_of(cur, user_id, since)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE recipient_id = %s AND seq > %s"
                f" ORDER BY seq ASC LIMIT %s",
                (user_id, seq, limit),
            )
            rows = await cur.fetchall()
        return [Notification.from_row(row) for row in rows]

    async def read_one(self, user_id: str, notification_id: str) -> ReadResult | None:
        """Mark one of this user's notifications read. Idempotent: read_at keeps its first value and the
        counter changes only the first time. None when the id is not one of this user's, whether or
        not it exists."""
        nid = _uuid_or_none(notification_id)
        if nid is None:
            return None
        async with self._db.connection() as conn, conn.cursor() as cur:
            async with cur.begin():
                await cur.execute(
                    f"UPDATE notifications SET read_at = now()"
                    f" WHERE notification_id = %s AND recipient_id = %s AND read_at IS NULL RETURNING {_COLUMNS}",
                    (nid, user_id),
                )
                row = await cur.fetchone()
                if row is None:
                    await cur.execute(
                        f"SELECT {_COLUMNS} FROM notifications WHERE notification_id = %s AND recipient_id = %s",
                        (nid, user_id),
                    )
                    row = await cur.fetchone()
                    return ReadResult(Notification.from_row(row), None) if row else None
                unread = await self._subtract(cur, user_id, 1)
        return ReadResult(Notification.from_row(row), unread)

    async def read_all(self, user_id: str) -> tuple[int, UnreadState | None]:
        """(rows changed, new unread state or None when nothing changed)."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            async with cur.begin():
                await cur.execute(
                    "UPDATE notifications SET read_at = now() WHERE recipient_id = %s AND read_at IS NULL",
                    (user_id,),
                )
                updated = int(cur.rowcount)
                unread = await self._subtract(cur, user_id, updated) if updated else None
        return updated, unread

    @staticmethod
    async def _subtract(cur: Any, user_id: str, read: int) -> UnreadState:
        # `unread - read`, not 0: a concurrent insert holding this row's lock is counted after us.
        await cur.execute(
            "INSERT INTO unread_counters AS c (user_id, unread, version) VALUES (%s, 0, 1)"
            " ON CONFLICT (user_id) DO UPDATE SET unread = GREATEST(c.unread - %s, 0), version = c.version + 1"
            " RETURNING unread, version",
            (user_id, read),
        )
        row = await cur.fetchone()
        return UnreadState(int(row[0]), int(row[1]))
