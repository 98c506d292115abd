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
from notify_server.storage.inbox import ACTIONS, SEEN_AT, Counts, InboxFilter, action_sql, counts_sql, page_sql

_COLUMNS = (
    "seq, notification_id, recipient_id, recipient_email, event_id, event_type, title, body,"
    f" priority, action_url, metadata, created_at, read_at, {SEEN_AT}, archived_at"
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
    seen_at: dt.datetime | None = None
    archived_at: dt.datetime | None = None

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
    """A user's unread and unseen counts (of notifications not archived) and their version, which grows
    with every change of either."""

    count: int
    version: int
    unseen: int | None = None  # None: not known (a push job of a worker of the previous release)


@dataclasses.dataclass(frozen=True)
class StoredEvent:
    notifications: list[Notification]  # only the rows this call inserted
    unread: dict[str, UnreadState]  # the new state of each recipient that got a row


@dataclasses.dataclass(frozen=True)
class Changed:
    """What an inbox action changed: the ids whose state it changed (in id order), and the user's new
    counts — None when no count moved (then no version was used either)."""

    notification_ids: list[str]
    unread: UnreadState | None


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
        self._unread: BatchLoader[str, UnreadState] = BatchLoader(self.unread_states, default=UnreadState(0, 0, 0))

    async def store_events(
        self, events: Sequence[NewNotifications], *, precondition: Precondition | None = None
    ) -> list[StoredEvent]:
        """Store one row per (event, recipient) for several events in one transaction and bump the
        recipients' unread counters; one StoredEvent per event, in order. Rows that exist (same event
        and recipient) are left as they are and counted nowhere: idempotent.

        One round trip: the database function `notify_store_events_v2` (migrations 0005, 0007) does it all, with
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
        sql = ("SELECT * FROM notify_store_events_v2(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
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
        for seq, notification_id, event_id, recipient_id, email, created_at, unread, unseen, version in rows:
            new = by_id[event_id]
            by_event.setdefault(event_id, []).append(Notification(
                seq=seq, notification_id=str(notification_id), recipient_id=recipient_id, recipient_email=email,
                event_id=event_id, event_type=new.event_type, title=new.title, body=new.body,
                priority=new.priority, action_url=new.action_url, metadata=new.metadata,
                created_at=created_at, read_at=None,
            ))
            states[recipient_id] = UnreadState(int(unread), int(version), int(unseen))
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
                "SELECT user_id, unread, version, unseen FROM unread_counters WHERE user_id = ANY(%s)",
                (list(user_ids),),
            )
            found = {row[0]: UnreadState(int(row[1]), int(row[2]), int(row[3])) for row in await cur.fetchall()}
        return {user_id: found.get(user_id, UnreadState(0, 0, 0)) for user_id in user_ids}

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
        self, user_id: str, *, limit: int, inbox: InboxFilter | None = None, before: str | None = None
    ) -> Page:
        """Newest first, of those matching `inbox` (default: the ones not archived); `before` is the id of
        the last item of the previous page (UnknownCursor if it is not one of this user's)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        clauses, params = (inbox or InboxFilter()).clauses()
        params.update(user=user_id, limit=limit + 1)
        async with self._db.connection() as conn, conn.cursor() as cur:
            if before is not None:
                params["before"] = await self._seq_of(cur, user_id, before)
                clauses.append("seq < %(before)s")
            await cur.execute(page_sql(_COLUMNS, clauses), params)
            rows = await cur.fetchall()
        items = [Notification.from_row(row) for row in rows[:limit]]
        next_before = items[-1].notification_id if len(rows) > limit else None
        return Page(items=items, next_before=next_before)

    async def counts(self, user_id: str, *, event_types: Sequence[str] = (), priorities: Sequence[str] = ()) -> Counts:
        """Unread, unseen and all of the user's notifications that are not archived, of these event types
        and priorities (empty: any). Without a filter unread and unseen are the counters; the rest is
        counted in the inbox index (storage.inbox.counts_sql)."""
        sql, params = counts_sql(event_types, priorities)
        params["user"] = user_id
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(sql, params)
            unread, unseen, total = await cur.fetchone()
        return Counts(unread=int(unread), unseen=int(unseen), total=int(total))

    async def get(self, user_id: str, notification_id: str) -> Notification | None:
        """One of this user's notifications; None when it is not theirs, whether or not it exists."""
        nid = _uuid_or_none(notification_id)
        if nid is None:
            return None
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM notifications WHERE notification_id = %s AND recipient_id = %s",
                (nid, user_id),
            )
            row = await cur.fetchone()
        return Notification.from_row(row) if row else None

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

    async def change(
        self, user_id: str, action: str, *, ids: Sequence[str] | None = None, inbox: InboxFilter | None = None
    ) -> Changed:
        """Apply an inbox action (storage.inbox.ACTIONS: read, unread, seen, archive, unarchive) to this
        user's notifications with these ids (ids of others, or of none, are skipped), or else to those
        matching `inbox`; one statement, its own transaction. Idempotent: rows already in the state the
        action leaves are not touched, and no count or version moves for them."""
        chosen = ACTIONS[action]
        params: dict[str, Any] = {"user": user_id}
        if ids is not None:
            valid = sorted({nid for nid in map(_uuid_or_none, ids) if nid is not None})
            if not valid:
                return Changed([], None)
            # A semi-join: one primary-key look-up per id (`= ANY(...)` was planned as a bitmap AND with
            # a scan of all the user's index entries, a third of a 1,000-id action's time for a heavy user).
            scope, params["ids"] = ["notification_id IN (SELECT unnest(%(ids)s::uuid[]))"], valid
        else:
            scope, filter_params = (inbox or InboxFilter()).clauses()
            params.update(filter_params)
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(action_sql(chosen, scope), params)
            changed_ids, unread, unseen, version = await cur.fetchone()
        state = None if version is None else UnreadState(int(unread), int(version), int(unseen))
        return Changed(list(changed_ids or ()), state)
