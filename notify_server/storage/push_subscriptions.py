"""The Web Push subscriptions repository (migrations/0009): which browsers each user asked pushes to."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from notify_server.storage.db import Database

_COLUMNS = "subscription_id, user_id, endpoint, p256dh, auth"
# Transaction-scoped lock per user: two subscribe calls of one user at once cannot both keep
# max_subscriptions_per_user rows and add one (each would trim before seeing the other's row).
_USER_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('notify:push:' || %s, 0))"


@dataclasses.dataclass(frozen=True, slots=True)
class PushSubscription:
    subscription_id: int
    user_id: str
    endpoint: str
    p256dh: bytes  # the browser's ECDH public key: the uncompressed P-256 point, 65 bytes
    auth: bytes  # the browser's auth secret, 16 bytes


class PushSubscriptionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def subscribe(
        self, user_id: str, endpoint: str, p256dh: bytes, auth: bytes, expires_at: dt.datetime | None, *, keep: int
    ) -> bool:
        """Record (or refresh) the subscription of this endpoint for this user, and drop the user's oldest
        beyond `keep`. True when it is new for this user (an endpoint another user had moves to this one:
        it is one browser profile, now signed in as someone else)."""
        async with self._db.connection() as conn, conn.cursor() as cur, cur.begin():
            await cur.execute(_USER_LOCK, (user_id,))
            await cur.execute("SELECT user_id FROM push_subscriptions WHERE endpoint = %s FOR UPDATE", (endpoint,))
            prior = await cur.fetchone()
            await cur.execute(
                "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth, expires_at)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (endpoint) DO UPDATE SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh,"
                " auth = EXCLUDED.auth, expires_at = EXCLUDED.expires_at, subscribed_at = now()",
                (user_id, endpoint, p256dh, auth, expires_at),
            )
            await cur.execute(
                "DELETE FROM push_subscriptions WHERE subscription_id IN (SELECT subscription_id FROM"
                " push_subscriptions WHERE user_id = %s ORDER BY subscribed_at DESC, subscription_id DESC OFFSET %s)",
                (user_id, keep),
            )
        return prior is None or prior[0] != user_id

    async def unsubscribe(self, user_id: str, endpoint: str) -> bool:
        """Delete this user's subscription of this endpoint (another user's is left alone); True if one was."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute("DELETE FROM push_subscriptions WHERE user_id = %s AND endpoint = %s",
                              (user_id, endpoint))
            return bool(cur.rowcount)

    async def of_users(self, user_ids: Sequence[str]) -> list[PushSubscription]:
        """Every live subscription of these users (those past the browser's expirationTime are left out)."""
        if not user_ids:
            return []
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM push_subscriptions WHERE user_id = ANY(%s)"
                " AND (expires_at IS NULL OR expires_at > now()) ORDER BY subscription_id",
                (list(user_ids),),
            )
            return [
                PushSubscription(row[0], row[1], row[2], bytes(row[3]), bytes(row[4])) for row in await cur.fetchall()
            ]

    async def delete(self, subscription_ids: Sequence[int]) -> int:
        """Delete subscriptions the push service says are gone (404/410); returns how many were."""
        if not subscription_ids:
            return 0
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute("DELETE FROM push_subscriptions WHERE subscription_id = ANY(%s)",
                              (list(subscription_ids),))
            return int(cur.rowcount)
