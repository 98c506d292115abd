"""Routing: "these users' frames or counts → the nodes that hold them", for the worker and for REST.

Presence says which nodes hold which of the users; each node gets one push job with the items of its
users (notify_server.transport.push). Users held nowhere get nothing: their notifications are stored already.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from redis.asyncio import Redis

from notify_server.core.settings import Settings
from notify_server.storage.notifications import UnreadState
from notify_server.transport.presence import Presence
from notify_server.transport.push import PushItem, PushTransport, StreamPushTransport


def group_by_node(nodes: Mapping[str, Sequence[str]], items: Sequence[PushItem]) -> dict[str, list[PushItem]]:
    """{node: its users} and items -> {node: the items of its users}."""
    by_user: dict[str, list[PushItem]] = {}
    for item in items:
        by_user.setdefault(item.user_id, []).append(item)
    grouped = {node: [i for user_id in users for i in by_user.get(user_id, ())] for node, users in nodes.items()}
    return {node: node_items for node, node_items in grouped.items() if node_items}


class PushRouter:
    def __init__(self, presence: Presence, transport: PushTransport) -> None:
        self._presence = presence
        self._transport = transport

    @classmethod
    def writer(cls, redis: Redis, settings: Settings) -> PushRouter:
        """A router for a process that writes push jobs and reads none (a worker, `notify-server prune`)."""
        transport = StreamPushTransport(
            redis, maxlen=settings.push.stream_maxlen, stream_ttl_s=settings.presence.ttl_s,
            job_expiry_s=settings.push.job_expiry_s,
        )
        return cls(Presence(redis, settings.presence.ttl_s), transport)

    async def route(self, user_ids: Collection[str], items_for: Callable[[set[str]], Sequence[PushItem]]) -> int:
        """Push `items_for(online users)` to the nodes holding them; returns push jobs written. The items
        are built only for users online somewhere (a 10,000-recipient event renders frames for those)."""
        if not user_ids:
            return 0
        nodes = await self._presence.nodes_for_users(list(user_ids))
        if not nodes:
            return 0
        online = {user_id for users in nodes.values() for user_id in users}
        by_node = group_by_node(nodes, items_for(online))
        await self._transport.enqueue(by_node)
        return len(by_node)

    async def online(self, user_ids: Collection[str]) -> set[str]:
        """Which of these users some node holds now."""
        nodes = await self._presence.nodes_for_users(list(user_ids))
        return {user_id for users in nodes.values() for user_id in users}

    async def push_unread_counts(self, states: Mapping[str, UnreadState]) -> int:
        """Fresh unread counts to every tab of these users on every node."""
        return await self.route(
            states,
            lambda online: [
                PushItem(user_id, unread_count=s.count, unread_version=s.version, unseen_count=s.unseen)
                for user_id, s in states.items() if user_id in online
            ],
        )

    async def push_items(self, items: Sequence[PushItem]) -> int:
        """These items (frames and counts, each for its user) to every node holding their users."""
        return await self.route({item.user_id for item in items},
                                lambda online: [item for item in items if item.user_id in online])
