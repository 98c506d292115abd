"""Session revocations travel to every node over Redis pub/sub, so open sockets close within seconds."""

from __future__ import annotations

from redis.asyncio import Redis

from notify_server.core.constants import SESSION_REVOKED_CHANNEL


async def publish_revocation(redis: Redis, token_hash: str) -> None:
    """Tell every node that the session with this hash is revoked (the hash, never the token)."""
    await redis.publish(SESSION_REVOKED_CHANNEL, token_hash)
