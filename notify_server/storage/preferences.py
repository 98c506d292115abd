"""The preferences table (migration 0008): each user's explicit switches, read for many users in one query.

Every sender asks it the same question — of these recipients, who has `channel` off for this event type —
in one query for the whole batch, so a change is seen by the next event any worker processes (nothing
is cached). Users without a row (most of them) cost Postgres an index probe and the worker nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from notify_server.core.preferences import UserPreferences, muted_users
from notify_server.core.templates import Template
from notify_server.storage.db import Database
from notify_server.storage.notifications import Precondition

# The ids go as one JSON text: psycopg2 quotes a list element by element, 10 ms of the worker's CPU for
# the 10,000 recipients of one event (1 µs each, against 0.07 µs as JSON; bench/preferences.py).
_LOAD = ("SELECT user_id, settings::text FROM notification_preferences"
         " WHERE user_id IN (SELECT jsonb_array_elements_text(%s::jsonb))")


async def load_on(cur: Any, user_ids: Sequence[str]) -> dict[str, UserPreferences]:
    """The preferences of those of `user_ids` who have any, read with `cur` (inside its transaction)."""
    if not user_ids:
        return {}
    await cur.execute(_LOAD, (orjson.dumps(user_ids if isinstance(user_ids, list) else list(user_ids)).decode(),))
    return {user_id: UserPreferences(orjson.loads(settings)) for user_id, settings in await cur.fetchall()}


PREFERENCES_HELD = "NP001"  # what notify_require_no_preferences (migration 0008) raises


class PreferenceStore:
    def __init__(self, db: Database, templates: Mapping[str, Template]) -> None:
        self._db = db
        self._templates = templates

    async def load(self, user_ids: Sequence[str]) -> dict[str, UserPreferences]:
        """One query: the preferences of those of `user_ids` who have any (absent ones get everything)."""
        if not user_ids:
            return {}
        async with self._db.connection() as conn, conn.cursor() as cur:
            return await load_on(cur, user_ids)

    async def muted(self, channel: str, event_type: str, user_ids: Sequence[str]) -> set[str]:
        """Of `user_ids`, those who turned `channel` off for `event_type` (by its type, its category or the
        channel itself); one query, none for a critical type. An event type without a template mutes
        nobody (it would not have been accepted). The API every channel's sender calls."""
        template = self._templates.get(event_type)
        if template is None or template.critical or not user_ids:
            return set()
        return muted_users(await self.load(user_ids), channel, template, user_ids)

    async def allowed(self, channel: str, event_type: str, user_ids: Sequence[str]) -> set[str]:
        """Of `user_ids`, those who want `event_type` on `channel`: the web push sender's channel filter
        (transport/webpush_sender.ChannelFilter)."""
        return set(user_ids) - await self.muted(channel, event_type, user_ids)

    @staticmethod
    def none_held(user_ids: Sequence[str]) -> Precondition:
        """A store's precondition: none of `user_ids` holds any preferences. Checked by the store's own
        statement, it costs the common batch nothing more than an index probe per recipient in Postgres;
        when it fails nothing is stored, and the caller reads their preferences and stores what they allow."""
        return Precondition("notify_require_no_preferences(%s)", (orjson.dumps(list(user_ids)).decode(),),
                            PREFERENCES_HELD)

    async def get(self, user_id: str) -> UserPreferences:
        return (await self.load([user_id])).get(user_id, UserPreferences())

    async def update(self, user_id: str, patch: Any) -> UserPreferences:
        """Apply a PATCH body (raises PreferenceError naming the bad key, changing nothing). Concurrent
        changes of one user are applied one after the other (the row is locked); a user whose switches are
        all cleared has no row again."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            async with cur.begin():
                await cur.execute(
                    "INSERT INTO notification_preferences (user_id, settings) VALUES (%s, '{}')"
                    " ON CONFLICT (user_id) DO NOTHING", (user_id,))
                await cur.execute(
                    "SELECT settings FROM notification_preferences WHERE user_id = %s FOR UPDATE", (user_id,))
                row = await cur.fetchone()
                updated = UserPreferences(row[0] if row else None).patched(patch, self._templates)
                if updated.empty:
                    await cur.execute("DELETE FROM notification_preferences WHERE user_id = %s", (user_id,))
                else:
                    await cur.execute(
                        "UPDATE notification_preferences SET settings = %s::jsonb, updated_at = now()"
                        " WHERE user_id = %s", (orjson.dumps(updated.to_document()).decode(), user_id))
        return updated
