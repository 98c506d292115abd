"""Presence: which node holds which users, in Redis, so workers know where to push.

`notify:presence:user:<user_id>` is a hash {node_id: expires_at (unix s)}. A node writes its field when
it gets a user's first socket, deletes it when the last one goes, and rewrites all of its fields every
`presence.refresh_interval_s` (which also rebuilds presence after a Redis restart). Readers ignore (and
delete) fields whose time has passed, so a node killed without a goodbye drops out after
`presence.ttl_s`; the key itself expires `ttl_s` after its last refresh.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence

from redis.asyncio import Redis

from notify_server.core.constants import PRESENCE_USER_PREFIX

logger = logging.getLogger("notify.presence")

_LOOKUP_CHUNK = 1000

# Which of these users (KEYS) are held by a live node: a flat list of (1-based key index, node id)
# pairs. Fields whose node's presence has lapsed (killed without a goodbye) are deleted on the way; the
# script runs atomically, so a field its node has just refreshed is never taken for lapsed. One call
# answers a thousand users: for a 10,000-recipient fan-out that is 10 replies to parse, not 10,000.
_ONLINE = """
local now = tonumber(ARGV[1])
local found = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    if tonumber(fields[j + 1]) > now then
      found[#found + 1] = i
      found[#found + 1] = fields[j]
    else
      redis.call('HDEL', key, fields[j])
    end
  end
end
return found
"""


def _user_key(user_id: str) -> str:
    return PRESENCE_USER_PREFIX + user_id


class Presence:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._online = redis.register_script(_ONLINE)

    async def add(self, node_id: str, user_ids: Iterable[str]) -> None:
        """Record (or refresh) that this node holds these users, a thousand per pipeline (a refresh of
        10,000 users in one pipeline held the node's event loop for 100-200 ms)."""
        expires_at = math.ceil(time.time()) + self._ttl_s  # never shorter than ttl_s
        users = list(user_ids)
        for start in range(0, len(users), _LOOKUP_CHUNK):
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users[start : start + _LOOKUP_CHUNK]:
                    key = _user_key(user_id)
                    pipe.hset(key, node_id, str(expires_at))
                    pipe.expire(key, self._ttl_s)
                await pipe.execute()

    async def remove(self, node_id: str, user_ids: Iterable[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.hdel(_user_key(user_id), node_id)
            await pipe.execute()

    async def nodes_for_users(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """{node_id: [user ids it holds]} for the users that are online anywhere."""
        now = time.time()
        by_node: dict[str, list[str]] = {}
        for start in range(0, len(user_ids), _LOOKUP_CHUNK):
            chunk = user_ids[start : start + _LOOKUP_CHUNK]
            found = await self._online(keys=[_user_key(u) for u in chunk], args=[now])
            for i in range(0, len(found), 2):
                by_node.setdefault(found[i + 1].decode(), []).append(chunk[int(found[i]) - 1])
        return by_node
