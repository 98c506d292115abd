"""Digest windows in Postgres (migration 0008): holding a burst's events, and ending windows with one digest.

For an event type with `digest_window_s` > 0, per recipient, the first event is delivered at once and
opens a window; the events of that type for that recipient arriving before it ends are held here
(`route`). When it ends, any worker's digest loop (workers/digests.py) takes the held events and stores
ONE notification for them (`deliver_due`), in the same transaction that marks them delivered: a worker
killed half-way, or Postgres going away, rolls both back, and the next try (any worker's) delivers them.
The windows' rows are the per-(user, type) lock both sides take first (the migration says why).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from notify_server.core.constants import PRIORITIES
from notify_server.core.preferences import IN_APP
from notify_server.core.templates import Template
from notify_server.storage.db import Database
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient, StoredEvent
from notify_server.storage.preferences import load_on

DIGEST_EVENT_PREFIX = "digest:"  # a digest's event_id: digest:<type>:<end of its window>:<user> (never shown)
DELIVERED_KEPT = dt.timedelta(days=1)  # delivered held rows kept this long (a retried job finds them)
ENDED_WINDOWS_KEPT = dt.timedelta(minutes=1)  # ended windows without held events kept this long
PRUNE_BATCH = 5000
_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES)}


@dataclasses.dataclass(frozen=True, slots=True)
class DigestCandidate:
    """An event of a digest type, with the recipients that would get it now (after preferences)."""

    new: NewNotifications
    window_s: float
    values: Mapping[str, str]  # the digest texts' values taken from this event


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered:
    """What one `deliver_due` did."""

    stored: list[StoredEvent]  # the digests inserted (to push)
    digests: int  # digests made (stored, or skipped by a muted user)
    events: int  # held events they folded in
    muted: int  # digests not stored: the user has the type off now
    late_s: list[float]  # per digest, how long after its window's end it was stored
    full: bool = False  # the flush took as many windows as it may: more may be due already


def digest_event_id(event_type: str, due_at: dt.datetime, user_id: str) -> str:
    """One per (user, type, window): the store takes the digests of one flush as separate events (their
    texts differ per user), and a digest stored twice would be refused as the same (event, recipient)."""
    return f"{DIGEST_EVENT_PREFIX}{event_type}:{due_at.astimezone(dt.UTC).isoformat()}:{user_id}"


class DigestStore:
    def __init__(self, db: Database, templates: Mapping[str, Template]) -> None:
        self._db = db
        self._templates = templates

    async def route(self, candidates: Sequence[DigestCandidate]) -> list[set[str]]:
        """Hold what falls inside an open window; for each candidate, the recipients held (the others are
        delivered now). One call of `notify_digest_route`, its own transaction."""
        held: list[set[str]] = [set() for _ in candidates]
        pairs = [(recipient.user_id, recipient.email, index)
                 for index, candidate in enumerate(candidates, start=1) for recipient in candidate.new.recipients]
        if not pairs:
            return held
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT * FROM notify_digest_route(%s::text[], %s::text[], %s::float8[], %s::text[], %s::text[],"
                " %s::text[], %s)",
                ([c.new.event_id for c in candidates], [c.new.event_type for c in candidates],
                 [c.window_s for c in candidates], [c.new.priority for c in candidates],
                 [c.new.action_url for c in candidates], [orjson.dumps(c.values).decode() for c in candidates],
                 orjson.dumps(pairs).decode()))
            for (ordinal,) in await cur.fetchall():
                user_id, _, index = pairs[ordinal - 1]
                held[index - 1].add(user_id)
        return held

    async def deliver_due(self, limit: int) -> Delivered:
        """End the windows due now (at most `limit` (user, type) pairs, skipping those another worker or a
        batch holds): one digest per (user, type, window) stored through the store path, its events
        marked delivered, all in one transaction. Preferences apply now: a user who turned the type off
        meanwhile gets no digest (its events are still marked delivered)."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            async with cur.begin():
                await cur.execute(
                    "SELECT w.user_id, w.event_type FROM digest_windows w WHERE (w.user_id, w.event_type) IN ("
                    "  SELECT h.user_id, h.event_type FROM digest_held h"
                    "   WHERE h.delivered_at IS NULL AND h.due_at <= statement_timestamp())"
                    " ORDER BY w.user_id, w.event_type LIMIT %s FOR UPDATE OF w SKIP LOCKED", (limit,))
                pairs = await cur.fetchall()
                if not pairs:
                    return Delivered([], 0, 0, 0, [])
                # Read after the locks: every batch that held an event in these windows has committed, and
                # any later one sees a clock past these windows' ends (it opens a new window).
                await cur.execute(
                    "SELECT h.event_id, h.user_id, h.event_type, h.due_at, h.email, h.priority, h.action_url, h.vals,"
                    "       statement_timestamp()"
                    "  FROM digest_held h JOIN unnest(%s::text[], %s::text[]) AS p(uid, typ)"
                    "       ON h.user_id = p.uid AND h.event_type = p.typ"
                    " WHERE h.delivered_at IS NULL AND h.due_at <= statement_timestamp()"
                    " ORDER BY h.user_id, h.event_type, h.due_at, h.held_seq",
                    ([p[0] for p in pairs], [p[1] for p in pairs]))
                rows = await cur.fetchall()
                groups: dict[tuple[str, str, dt.datetime], list[Any]] = {}
                for row in rows:
                    groups.setdefault((row[1], row[2], row[3]), []).append(row)
                found = await load_on(cur, sorted({user_id for user_id, _, _ in groups}))
                digests: list[NewNotifications] = []
                late_s: list[float] = []
                muted = 0
                for (user_id, event_type, due_at), held in groups.items():
                    template = self._templates.get(event_type)
                    preferences = found.get(user_id)
                    if template is not None and preferences is not None and not preferences.allows(IN_APP, template):
                        muted += 1
                        continue
                    digests.append(_digest(template, user_id, event_type, due_at, held))
                    late_s.append(max(0.0, (held[-1][8] - due_at).total_seconds()))
                stored = await NotificationRepository.store_events_on(cur, digests)
                await cur.execute(
                    "UPDATE digest_held h SET delivered_at = now(), vals = NULL"
                    "  FROM unnest(%s::text[], %s::text[]) AS d(ev, uid)"
                    " WHERE h.event_id = d.ev AND h.user_id = d.uid",
                    ([row[0] for row in rows], [row[1] for row in rows]))
        return Delivered(stored, len(groups), len(rows), muted, late_s, full=len(pairs) >= limit)

    async def pending(self) -> int:
        """Held events not delivered yet (all windows)."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM digest_held WHERE delivered_at IS NULL")
            row = await cur.fetchone()
        return int(row[0])

    async def prune(self) -> int:
        """Forget what no retry can need any more: held rows delivered a day ago, and windows ended a
        minute ago that hold nothing (a batch holding their lock is skipped). Rows deleted."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "DELETE FROM digest_held WHERE (event_id, user_id) IN ("
                "  SELECT event_id, user_id FROM digest_held WHERE delivered_at < now() - %s LIMIT %s)",
                (DELIVERED_KEPT, PRUNE_BATCH))
            deleted = int(cur.rowcount)
            await cur.execute(
                "DELETE FROM digest_windows WHERE (user_id, event_type) IN ("
                "  SELECT w.user_id, w.event_type FROM digest_windows w WHERE w.due_at < now() - %s"
                "   AND NOT EXISTS (SELECT 1 FROM digest_held h WHERE h.user_id = w.user_id"
                "                   AND h.event_type = w.event_type AND h.delivered_at IS NULL)"
                "   LIMIT %s FOR UPDATE SKIP LOCKED)",
                (ENDED_WINDOWS_KEPT, PRUNE_BATCH))
            return deleted + int(cur.rowcount)


def _digest(
    template: Template | None, user_id: str, event_type: str, due_at: dt.datetime, held: list[Any]
) -> NewNotifications:
    """The digest of one window's held rows (oldest first): texts from the digest templates with {count}
    and the latest event's values; its action URL and email from the latest event; the highest priority
    of them all, so an URGENT one is not demoted by being folded in."""
    latest = held[-1]
    count = len(held)
    values = latest[7] if isinstance(latest[7], dict) else {}
    if template is not None:
        title, body = template.render_digest(values, count)
    else:  # the type left the config while events were held: still delivered, plainly
        title, body = event_type, f"{count} notifications"
    priority = max((row[5] for row in held), key=lambda p: _RANK.get(p, 0))
    return NewNotifications(
        event_id=digest_event_id(event_type, due_at, user_id), event_type=event_type, title=title, body=body,
        priority=priority, action_url=latest[6], metadata={"digest_count": count},
        recipients=[Recipient(user_id, latest[4])],
    )
