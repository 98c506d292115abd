"""Heartbeat: one sweep task per node pings every socket every `heartbeat.interval_s`; a socket that has
not answered `heartbeat.timeout_s` after its ping is stale and is dropped.

aiohttp's own `heartbeat=` waits interval/2 for the pong (15 s, not the 10 s we promise) and keeps a
timer per socket; a single sweep gives the exact numbers at one task per node. Pongs are seen because
every socket's handler keeps reading (autoping off, the handler records them in ConnectionState).
"""

from __future__ import annotations

import asyncio
import logging
import time

from notify_server.connections import NotificationWebSocketManager, WebSocketLike

logger = logging.getLogger("notify.heartbeat")


async def _ping(ws: WebSocketLike, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(ws.ping(), timeout_s)  # type: ignore[attr-defined]
    except (TimeoutError, Exception):
        pass  # unanswered is unanswered: the sweep drops it


async def sweep_once(manager: NotificationWebSocketManager, timeout_s: float) -> int:
    """Ping every socket, wait timeout_s, drop those that sent no pong since. Returns how many dropped."""
    pinged = manager.all_sockets()
    if not pinged:
        return 0
    started = time.monotonic()
    for ws in pinged:
        state = manager.states.get(ws)
        if state is not None:
            state.last_ping_at = started
    await asyncio.gather(*(_ping(ws, timeout_s) for ws in pinged))
    await asyncio.sleep(max(0.0, timeout_s - (time.monotonic() - started)))
    dropped = 0
    for ws in pinged:
        state = manager.states.get(ws)
        if state is None or state.last_pong_at >= state.last_ping_at:
            continue
        dropped += 1
        await drop_stale(manager, ws)
    if dropped:
        logger.info("dropped %d stale socket(s) without a pong within %.1fs", dropped, timeout_s)
    return dropped


async def drop_stale(manager: NotificationWebSocketManager, ws: WebSocketLike) -> None:
    """A stale peer will not answer a close handshake: abort its transport and forget it now."""
    state = manager.states.get(ws)
    if state is None:
        return
    if state.transport is not None:
        state.transport.abort()
    else:
        manager.close_soon(ws, 1011, b"heartbeat timeout")
    await manager.remove_connection(state.user_id, ws)


async def run_heartbeat(manager: NotificationWebSocketManager, interval_s: float, timeout_s: float) -> None:
    while True:
        cycle_started = time.monotonic()
        await sweep_once(manager, timeout_s)
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - cycle_started)))
