"""The session store (SPEC §6 `sessions`): tokens are handed out once and kept only as sha256."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence

from notify_server.core.batching import BatchLoader
from notify_server.storage.db import Database

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 512  # longer inputs are not tokens; refuse them before hashing


def hash_token(token: str) -> str:
    """Lower-case hex sha256 of the token: the only form that is stored or compared."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Session:
    token_hash: str
    user_id: str
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class NewSession:
    token: str  # shown once to whoever created it; never stored
    user_id: str
    expires_at: dt.datetime


class SessionStore:
    """Create, validate and revoke sessions. Lookups go by hash only (no token comparison in Python)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Concurrent validations (a reconnect storm) share one query per event-loop turn.
        self._by_hash: BatchLoader[str, Session | None] = BatchLoader(self.sessions_by_hash, default=None)

    async def create(self, user_id: str, ttl_s: int) -> NewSession:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO sessions (token_hash, user_id, expires_at)"
                " VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING expires_at",
                (hash_token(token), user_id, ttl_s),
            )
            (expires_at,) = await cur.fetchone()
        return NewSession(token=token, user_id=user_id, expires_at=expires_at)

    async def validate(self, token: str | None) -> Session | None:
        """The live session of this token, or None when missing, unknown, expired or revoked."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        return await self.validate_hash(hash_token(token))

    async def validate_hash(self, token_hash: str) -> Session | None:
        return await self._by_hash.load(token_hash)

    async def sessions_by_hash(self, token_hashes: Sequence[str]) -> dict[str, Session]:
        """The live sessions among these hashes (one query)."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT token_hash, user_id, expires_at FROM sessions"
                " WHERE token_hash = ANY(%s) AND revoked_at IS NULL AND expires_at > now()",
                (list(token_hashes),),
            )
            rows = await cur.fetchall()
        return {row[0]: Session(token_hash=row[0], user_id=row[1], expires_at=row[2]) for row in rows}

    async def live_hashes(self, token_hashes: list[str]) -> dict[str, dt.datetime]:
        """Of these hashes, the ones still valid, with their expiry (one query for a whole node)."""
        if not token_hashes:
            return {}
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT token_hash, expires_at FROM sessions"
                " WHERE token_hash = ANY(%s) AND revoked_at IS NULL AND expires_at > now()",
                (token_hashes,),
            )
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def revoke(self, token: str) -> str | None:
        """Revoke a live session; returns its hash, or None when there was none to revoke."""
        token_hash = hash_token(token)
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "UPDATE sessions SET revoked_at = now() WHERE token_hash = %s AND revoked_at IS NULL RETURNING 1",
                (token_hash,),
            )
            row = await cur.fetchone()
        return token_hash if row else None
