"""The push consumer: this node's push jobs, read from its stream and handed to the connection map.

Every frame goes through the seed's `push_to_user`, every count through `push_unread_count` (SPEC §1: the
node consumes push jobs to call them); `deliver` is the batch around them: frames first, then each user's
newest count once per batch (a burst of changes sends the latest count, not one frame per change).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from notify_server.core.metrics import ServerMetrics
from notify_server.core.supervisor import LoopHealth
from notify_server.storage.notifications import UnreadState
from notify_server.transport.connections import NotificationWebSocketManager
from notify_server.transport.push import PushJob, PushTransport


async def deliver(manager: NotificationWebSocketManager, jobs: Sequence[PushJob]) -> None:
    """Every frame of these jobs to its user's sockets here (`push_to_user`), then each user's newest
    unread count, once (`push_unread_count`). Users with no socket here are skipped by both."""
    newest: dict[str, UnreadState | int] = {}
    for job in jobs:
        for item in job.items:
            if item.frame is not None:
                await manager.push_to_user(item.user_id, item.frame, item.notification_id)
            if item.unread_count is None:
                continue
            if item.unread_version is None:
                newest.setdefault(item.user_id, item.unread_count)
                continue
            seen = newest.get(item.user_id)
            if not isinstance(seen, UnreadState) or item.unread_version >= seen.version:
                newest[item.user_id] = UnreadState(item.unread_count, item.unread_version, item.unseen_count)
    for user_id, unread in newest.items():
        await manager.push_unread_count(user_id, unread)


class PushConsumer:
    """Reads this node's push jobs until cancelled. Its position in the stream outlives a restart of the
    loop (a Redis blip), so the jobs written meanwhile are delivered, not skipped."""

    def __init__(
        self, transport: PushTransport, node_id: str, manager: NotificationWebSocketManager, metrics: ServerMetrics
    ) -> None:
        self._transport = transport
        self._node_id = node_id
        self._manager = manager
        self._metrics = metrics
        self._last_id: bytes | None = None

    async def run(self, health: LoopHealth) -> None:
        if self._last_id is None:
            self._last_id = await self._transport.newest_id(self._node_id)
        while True:
            self._last_id, jobs = await self._transport.read(self._node_id, self._last_id)
            health.ok()
            if not jobs:
                continue
            await deliver(self._manager, jobs)
            now = time.time()
            for job in jobs:
                self._metrics.push_jobs.inc()
                self._metrics.push_latency.observe(max(0.0, now - job.enqueued_at))
