"""The push consumer: this node's push jobs, handed to the connection map."""

from __future__ import annotations

import time
from collections.abc import Sequence

from notify_server.connections import NotificationWebSocketManager
from notify_server.frames import unread_count_frame
from notify_server.metrics import ServerMetrics
from notify_server.push import PushJob, PushTransport


def deliver(manager: NotificationWebSocketManager, jobs: Sequence[PushJob]) -> None:
    """Queue every frame of a batch of jobs for its user's sockets here. Unread counts are coalesced
    per batch: each user gets the newest count once, after the batch's notifications."""
    newest_unread: dict[str, tuple[int, int | None]] = {}
    for job in jobs:
        for item in job.items:
            sockets = manager.connections.get(item.user_id)
            if not sockets:
                continue  # the user left this node since the worker looked
            if item.frame is not None:
                for ws in list(sockets):
                    manager.send(ws, item.frame, item.notification_id)
            if item.unread_count is not None:
                seen = newest_unread.get(item.user_id)
                if seen is None or (item.unread_version or 0) >= (seen[1] or 0):
                    newest_unread[item.user_id] = (item.unread_count, item.unread_version)
    for user_id, (count, version) in newest_unread.items():
        text = unread_count_frame(count, version)
        for ws in list(manager.connections.get(user_id, ())):
            manager.send_unread(ws, text, version)


async def consume_pushes(
    transport: PushTransport, node_id: str, manager: NotificationWebSocketManager, metrics: ServerMetrics
) -> None:
    """Read this node's push stream until cancelled."""
    async for jobs in transport.consume(node_id):
        deliver(manager, jobs)
        now = time.time()
        for job in jobs:
            metrics.push_jobs.inc()
            metrics.push_latency.observe(max(0.0, now - job.enqueued_at))
