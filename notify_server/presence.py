"""Presence: which node holds which users, in Redis, so workers know where to push.

`notify:presence:user:<user_id>` is a hash {node_id: expires_at (unix s)}. A node writes its field when
it gets a user's first socket, deletes it when the last one goes, and rewrites all of its fields every
`presence.refresh_interval_s` (which also rebuilds presence after a Redis restart). Readers ignore fields
whose time has passed, so a node killed without a goodbye drops out after `presence.ttl_s`; the key
itself expires `ttl_s` after its last refresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from redis.asyncio import Redis

from notify_server.constants import PRESENCE_USER_PREFIX

logger = logging.getLogger("notify.presence")

_LOOKUP_CHUNK = 1000

# Delete a lapsed field only if it still holds the lapsed expiry (its node may have just refreshed it).
_DELETE_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def _user_key(user_id: str) -> str:
    return PRESENCE_USER_PREFIX + user_id


class Presence:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._delete_if_unchanged = redis.register_script(_DELETE_IF_UNCHANGED)

    async def add(self, node_id: str, user_ids: Iterable[str]) -> None:
        """Record (or refresh) that this node holds these users."""
        expires_at = int(time.time()) + self._ttl_s
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                key = _user_key(user_id)
                pipe.hset(key, node_id, expires_at)
                pipe.expire(key, self._ttl_s)
            await pipe.execute()

    async def remove(self, node_id: str, user_ids: Iterable[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hdel(_user_key(user_id), node_id)
            await pipe.execute()

    async def nodes_for_users(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """{node_id: [user ids it holds]} for the users that are online anywhere. Fields of nodes whose
        presence has lapsed (killed without a goodbye) are removed on the way."""
        now = time.time()
        by_node: dict[str, list[str]] = {}
        lapsed: list[tuple[str, bytes, bytes]] = []
        for start in range(0, len(user_ids), _LOOKUP_CHUNK):
            chunk = user_ids[start : start + _LOOKUP_CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in chunk:
                    pipe.hgetall(_user_key(user_id))
                results = await pipe.execute()
            for user_id, fields in zip(chunk, results, strict=True):
                for node, expires_at in fields.items():
                    if float(expires_at) > now:
                        by_node.setdefault(node.decode(), []).append(user_id)
                    else:
                        lapsed.append((user_id, node, expires_at))
        if lapsed:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, node, expires_at in lapsed:
                    await self._delete_if_unchanged(keys=[_user_key(user_id)], args=[node, expires_at], client=pipe)
                await pipe.execute()
        return by_node
