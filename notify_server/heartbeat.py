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


PING_SLICE = 500  # sockets pinged between two yields to the event loop
CONGESTED_BYTES = 65536  # a socket with this much unsent is not pinged this round (its outbox rules)


async def _ping(ws: WebSocketLike, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):  # no task per ping (a task each stalled 10,000 sockets)
            await ws.ping()  # type: ignore[attr-defined]
    except (TimeoutError, Exception):
        pass  # unanswered is unanswered: the sweep drops it


async def sweep_once(manager: NotificationWebSocketManager, timeout_s: float) -> int:
    """Ping every socket, wait timeout_s, drop those that sent no pong since. Returns how many dropped.
    Pings go out in slices, yielding between them, so deliveries are not held up behind a sweep."""
    sockets = manager.all_sockets()
    if not sockets:
        return 0
    started = time.monotonic()
    pinged = []
    for index, ws in enumerate(sockets):
        state = manager.states.get(ws)
        if state is None:
            continue
        transport = state.transport
        if transport is not None and transport.get_write_buffer_size() > CONGESTED_BYTES:
            continue  # a backlog of frames: judged by its outbox (4008), not by a ping behind them
        state.last_ping_at = time.monotonic()
        pinged.append(ws)
        await _ping(ws, timeout_s)
        if index % PING_SLICE == PING_SLICE - 1:
            await asyncio.sleep(0)
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
