"""The push consumer: this node's push jobs, read from its stream and handed to the connection map."""

from __future__ import annotations

import time

from notify_server.core.metrics import ServerMetrics
from notify_server.core.supervisor import LoopHealth
from notify_server.transport.connections import NotificationWebSocketManager
from notify_server.transport.push import PushTransport


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
            self._manager.deliver(jobs)
            now = time.time()
            for job in jobs:
                self._metrics.push_jobs.inc()
                self._metrics.push_latency.observe(max(0.0, now - job.enqueued_at))
