"""Keeping open sockets' sessions honest: close with 4001 at expiry, on revocation, on re-check.

- Expiry: a timer per socket at its session's expires_at; it re-checks first, so an extended session
  keeps its socket (and gets a new timer).
- Revocation: `notify-server session revoke` publishes the session's hash on Redis pub/sub; every
  node re-checks the sockets of that session at once.
- Re-check: every `session.recheck_interval_s`, one query validates every session this node holds,
  for changes made directly in the table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable

import redis.exceptions
from redis.asyncio import Redis

from notify_server.connections import ConnectionState, NotificationWebSocketManager, WebSocketLike
from notify_server.constants import CLOSE_UNAUTHORIZED, SESSION_REVOKED_CHANNEL
from notify_server.sessions import SessionStore

logger = logging.getLogger("notify.sessions")

_RECHECK_CHUNK = 1000


class SessionWatcher:
    def __init__(self, manager: NotificationWebSocketManager, store: SessionStore) -> None:
        self._manager = manager
        self._store = store
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- expiry timers

    def watch(self, ws: WebSocketLike, state: ConnectionState, expires_at: dt.datetime) -> None:
        """Arrange for this socket to be re-checked when its session expires."""
        if state.expiry_timer is not None:
            state.expiry_timer.cancel()
        delay_s = max(0.0, (expires_at - dt.datetime.now(dt.UTC)).total_seconds())
        loop = asyncio.get_running_loop()
        state.expiry_timer = loop.call_later(delay_s, self._on_expiry, ws)

    def _on_expiry(self, ws: WebSocketLike) -> None:
        task = asyncio.get_running_loop().create_task(self.recheck([ws]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recheck(self, sockets: Iterable[WebSocketLike]) -> int:
        """Validate the sessions of these sockets; close with 4001 those no longer valid. Returns closed."""
        by_hash: dict[str, list[WebSocketLike]] = {}
        for ws in sockets:
            state = self._manager.states.get(ws)
            if state is not None and not state.closing:
                by_hash.setdefault(state.session_hash, []).append(ws)
        hashes = list(by_hash)
        closed = 0
        for start in range(0, len(hashes), _RECHECK_CHUNK):
            chunk = hashes[start : start + _RECHECK_CHUNK]
            live = await self._store.live_hashes(chunk)
            for token_hash in chunk:
                for ws in by_hash[token_hash]:
                    state = self._manager.states.get(ws)
                    if state is None:
                        continue
                    expires_at = live.get(token_hash)
                    if expires_at is None:
                        self._manager.close_soon(ws, CLOSE_UNAUTHORIZED, b"session ended")
                        closed += 1
                    else:
                        self.watch(ws, state, expires_at)
        if closed:
            logger.info("closed %d socket(s) whose session ended", closed)
        return closed

    async def recheck_session(self, token_hash: str) -> int:
        return await self.recheck(
            ws for ws, state in list(self._manager.states.items()) if state.session_hash == token_hash
        )

    # ---------------------------------------------------------------- background loops

    async def run_periodic(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.recheck(self._manager.all_sockets())
            except Exception:
                logger.exception("periodic session re-check failed; trying again next interval")

    async def run_revocations(self, client: Redis) -> None:
        """Listen for revocations; resubscribes by itself after a Redis outage."""
        delay_s = 0.1
        while True:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(SESSION_REVOKED_CHANNEL)
                delay_s = 0.1
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    token_hash = message["data"]
                    if isinstance(token_hash, bytes):
                        token_hash = token_hash.decode("ascii", "replace")
                    await self.recheck_session(token_hash)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                logger.warning("revocation channel lost (%s); resubscribing in %.1fs", type(exc).__name__, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(2.0, delay_s * 2)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
