"""Heartbeat: one sweep per node pings every socket every `heartbeat.interval_s`; a socket that has not
answered `heartbeat.timeout_s` after its ping is stale and is dropped (the manager does both).

aiohttp's own `heartbeat=` waits interval/2 for the pong (15 s, not the 10 s we promise) and keeps a
timer per socket; a single sweep gives the exact numbers at one task per node. Pongs are seen because
every socket's handler keeps reading (autoping off; the handler reports them with `record_pong`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from notify_server.core.supervisor import LoopHealth
from notify_server.transport.connections import NotificationWebSocketManager

logger = logging.getLogger("notify.heartbeat")


async def sweep_once(manager: NotificationWebSocketManager, timeout_s: float) -> int:
    """Ping every socket, wait timeout_s, drop those that sent no pong since. Returns how many dropped."""
    started = time.monotonic()
    pinged = await manager.ping_all(timeout_s)
    if not pinged:
        return 0
    await asyncio.sleep(max(0.0, timeout_s - (time.monotonic() - started)))
    dropped = await manager.drop_unanswered(pinged)
    if dropped:
        logger.info("dropped %d stale socket(s) without a pong within %.1fs", dropped, timeout_s)
    return dropped


async def run_heartbeat(
    manager: NotificationWebSocketManager, interval_s: float, timeout_s: float, health: LoopHealth
) -> None:
    while True:
        cycle_started = time.monotonic()
        await sweep_once(manager, timeout_s)
        health.ok()
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - cycle_started)))
