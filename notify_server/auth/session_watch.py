"""Keeping open sockets' sessions honest: close with 4001 at expiry, on revocation, on re-check.

- Expiry: a timer per socket at its session's expires_at; it re-checks first, so an extended session
  keeps its socket (and gets a new timer). While Postgres is away the check is retried every second.
- Revocation: `notify-server session revoke` publishes the session's hash on Redis pub/sub; every node
  queues it and re-checks the sockets of that session. A revocation heard while Postgres is away stays
  queued and is applied as soon as Postgres answers again (the applier retries with a short backoff).
- Re-check: every `session.recheck_interval_s`, one query validates every session this node holds, for
  changes made directly in the table.

Sockets authenticated by another method (README "Authentication") follow the same timers:
- jwt: closed with 4001 at the token's `exp` unless a `refresh` frame moved it (nothing to re-ask);
- proxy: the app's endpoint is asked again on the periodic re-check and at the `expires_at` it gave,
  once per distinct credential; 401/403 or another user closes with 4001. While the endpoint cannot
  answer the sockets are kept (an app outage must not disconnect everyone), and one whose expiry has
  passed is asked again every CREDENTIAL_RETRY_S.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio import Redis

from notify_server.auth.authenticator import AuthUnavailable
from notify_server.core.constants import CLOSE_UNAUTHORIZED, SESSION_REVOKED_CHANNEL
from notify_server.core.identity import Identity
from notify_server.core.stores import unavailable
from notify_server.core.supervisor import LoopHealth
from notify_server.storage.sessions import SessionStore
from notify_server.transport.connections import NotificationWebSocketManager, WebSocketLike

logger = logging.getLogger("notify.sessions")

_RECHECK_CHUNK = 1000
EXPIRY_RETRY_S = 1.0  # an expiry check that could not reach Postgres runs again this much later
CREDENTIAL_RETRY_S = 5.0  # a proxied socket past its expiry, while the app's endpoint cannot tell
CREDENTIAL_RECHECK_CONCURRENCY = 32  # calls to the app's endpoint in flight during one re-check

Revalidate = Callable[[Identity], Awaitable["Identity | None"]]


class SessionWatcher:
    def __init__(
        self, manager: NotificationWebSocketManager, store: SessionStore, revalidate: Revalidate | None = None
    ) -> None:
        self._manager = manager
        self._store = store
        self._revalidate = revalidate  # jwt and proxy sockets (auth.authenticator.Authenticator.revalidate)
        self._tasks: set[asyncio.Task[None]] = set()
        self._revoked: set[str] = set()  # session hashes announced and not yet applied
        self._revoked_arrived = asyncio.Event()

    # ---------------------------------------------------------------- expiry timers

    def watch(self, ws: WebSocketLike, expires_at: dt.datetime | None) -> None:
        """Arrange for this socket to be re-checked when its credential expires (None: it does not)."""
        if expires_at is None:
            return
        self._manager.set_expiry(ws, (expires_at - dt.datetime.now(dt.UTC)).total_seconds(), self._on_expiry)

    def _on_expiry(self, ws: WebSocketLike) -> None:
        task = asyncio.get_running_loop().create_task(self._check_expired(ws))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check_expired(self, ws: WebSocketLike) -> None:
        try:
            await self.recheck([ws])
        except Exception as exc:
            if not unavailable(exc):
                logger.exception("session expiry check failed")
            self._manager.set_expiry(ws, EXPIRY_RETRY_S, self._on_expiry)

    async def recheck(self, sockets: Iterable[WebSocketLike] | None) -> int:
        """Validate the credentials of these sockets (None: all); close with 4001 those no longer valid.
        Returns how many were closed."""
        sockets = None if sockets is None else list(sockets)
        closed = await self._recheck_sessions(sockets)
        closed += await self._recheck_credentials(sockets)
        return closed

    async def _recheck_sessions(self, sockets: list[WebSocketLike] | None) -> int:
        by_hash = self._manager.sockets_by_session(sockets)
        hashes = list(by_hash)
        closed = 0
        for start in range(0, len(hashes), _RECHECK_CHUNK):
            chunk = hashes[start : start + _RECHECK_CHUNK]
            live = await self._store.live_hashes(chunk)
            for token_hash in chunk:
                expires_at = live.get(token_hash)
                for ws in by_hash[token_hash]:
                    state = self._manager.state_of(ws)
                    if state is None or state.session_hash != token_hash:
                        continue  # refreshed onto another credential meanwhile
                    if expires_at is None:
                        self._manager.close_soon(ws, CLOSE_UNAUTHORIZED, b"session ended")
                        closed += 1
                    else:
                        self.watch(ws, expires_at)
        if closed:
            logger.info("closed %d socket(s) whose session ended", closed)
        return closed

    async def _recheck_credentials(self, sockets: list[WebSocketLike] | None) -> int:
        """jwt and proxy sockets: ask once per distinct credential (a bounded number at a time)."""
        if self._revalidate is None:
            return 0
        by_identity = self._manager.sockets_by_credential(sockets)
        if not by_identity:
            return 0
        revalidate = self._revalidate
        limit = asyncio.Semaphore(CREDENTIAL_RECHECK_CONCURRENCY)

        async def verdict(identity: Identity) -> Identity | None | AuthUnavailable:
            async with limit:
                try:
                    return await revalidate(identity)
                except AuthUnavailable as exc:
                    return exc

        verdicts = await asyncio.gather(*(verdict(identity) for identity in by_identity))
        closed = undecided = 0
        for (identity, group), fresh in zip(by_identity.items(), verdicts, strict=True):
            for ws in group:
                state = self._manager.state_of(ws)
                if state is None or state.identity != identity:
                    continue  # gone, or refreshed onto another credential meanwhile
                if isinstance(fresh, AuthUnavailable):
                    undecided += 1
                    if identity.expired():
                        self._manager.set_expiry(ws, CREDENTIAL_RETRY_S, self._on_expiry)
                elif fresh is None:
                    self._manager.close_soon(ws, CLOSE_UNAUTHORIZED, b"session ended")
                    closed += 1
                else:
                    if fresh != identity:
                        self._manager.set_identity(ws, fresh)
                    self.watch(ws, fresh.expires_at)
        if closed:
            logger.info("closed %d socket(s) whose token or app session ended", closed)
        if undecided:
            logger.warning("kept %d proxied socket(s) unchecked: the app's endpoint could not tell", undecided)
        return closed

    # ---------------------------------------------------------------- background loops (supervised)

    async def run_periodic(self, interval_s: float, health: LoopHealth) -> None:
        while True:
            await self.recheck(None)
            health.ok()
            await asyncio.sleep(interval_s)

    async def run_revocation_listener(self, client: Redis, health: LoopHealth) -> None:
        """Queue every revocation announced on Redis pub/sub (resubscribed by the supervisor after an
        outage; revocations announced while unsubscribed are found by the periodic re-check)."""
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(SESSION_REVOKED_CHANNEL)
            health.ok()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                token_hash = message["data"]
                if isinstance(token_hash, bytes):
                    token_hash = token_hash.decode("ascii", "replace")
                self._revoked.add(str(token_hash))
                self._revoked_arrived.set()
        finally:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception as exc:
                logger.debug("closing the revocation subscription: %s", type(exc).__name__)

    async def run_revocation_applier(self, health: LoopHealth) -> None:
        """Close the sockets of queued revocations; a hash leaves the queue only once it was checked."""
        while True:
            if not self._revoked:
                await self._revoked_arrived.wait()
            self._revoked_arrived.clear()
            for token_hash in list(self._revoked):
                await self.recheck(self._manager.sockets_of_session(token_hash))
                self._revoked.discard(token_hash)
            health.ok()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
