"""Repair of live delivery after a node's presence or push stream was broken (a Redis outage, restart or
fail-over).

While a node cannot refresh its presence, its users may look offline to the workers, which then write no
push job for them (their notifications are stored all the same); a Redis restart without persistence
also loses push jobs not yet read. A socket that stayed open through that would never learn of them
(`?since=` catch-up only runs on reconnect). So when the presence refresher or the push consumer fails,
the node notes the time; once both are up again it looks up, for every user it holds, the
notifications stored since then (less a margin) and delivers them with fresh unread counts — clients drop
the ids they already have. A user with more than REPLAY_PER_USER of them gets a `resync` frame instead
(the client refetches over REST), as a catch-up does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from notify_server.core.supervisor import LoopHealth
from notify_server.storage.notifications import NotificationRepository
from notify_server.transport.connections import NotificationWebSocketManager
from notify_server.transport.delivery import deliver
from notify_server.transport.frames import RESYNC_FRAME, notification_frames
from notify_server.transport.push import PushItem, PushJob

logger = logging.getLogger("notify.repair")

WATCHED_LOOPS = frozenset(("presence-refresher", "push-consumer"))
# Rows are stamped with their transaction's start and looked up after the commit: a batch that began
# this long before the first failure may still have missed the node.
MARGIN_S = 10.0
REPLAY_PER_USER = 20
_USER_CHUNK = 1000


class PushGapRepair:
    def __init__(self, manager: NotificationWebSocketManager, repository: NotificationRepository) -> None:
        self._manager = manager
        self._repository = repository
        self._down: set[str] = set()
        self._broken_since: float | None = None  # unix time of the first failure not yet repaired
        self._ready = asyncio.Event()  # a repair is due (the watched loops are all up again)

    def loop_changed(self, name: str, up: bool) -> None:
        """The supervisor's hook: a loop went down or came back."""
        if name not in WATCHED_LOOPS:
            return
        if not up:
            self._down.add(name)
            if self._broken_since is None:
                self._broken_since = time.time()
            self._ready.clear()
            return
        self._down.discard(name)
        if not self._down and self._broken_since is not None:
            self._ready.set()

    async def run(self, health: LoopHealth) -> None:
        """Supervised: repairs when due; a repair that fails (Postgres away) is tried again, whole."""
        while True:
            await self._ready.wait()
            since = self._broken_since
            if since is None or self._down:
                self._ready.clear()
                continue
            await self.replay(dt.datetime.fromtimestamp(since - MARGIN_S, dt.UTC))
            if self._broken_since == since and not self._down:
                self._broken_since = None
                self._ready.clear()
            health.ok()

    async def replay(self, since: dt.datetime) -> int:
        """Deliver to this node's sockets what their users got since `since`; returns frames queued."""
        users = self._manager.user_ids()
        queued = 0
        for start in range(0, len(users), _USER_CHUNK):
            chunk = users[start : start + _USER_CHUNK]
            found = await self._repository.newest_since(chunk, since, per_user=REPLAY_PER_USER)
            if not found:
                continue
            states = await self._repository.unread_states(list(found))
            rows = [n for user_rows in found.values() for n in user_rows]
            frames = notification_frames(rows)
            items = []
            for user_id, user_rows in found.items():
                state = states[user_id]
                if len(user_rows) >= REPLAY_PER_USER:
                    items.append(PushItem(user_id, RESYNC_FRAME, None, state.count, state.version, state.unseen))
                    continue
                items += [PushItem(user_id, frames[n.notification_id], n.notification_id) for n in user_rows]
                items.append(PushItem(user_id, unread_count=state.count, unread_version=state.version,
                                      unseen_count=state.unseen))
            await deliver(self._manager, [PushJob(items=items, enqueued_at=time.time())])
            queued += len(items)
        logger.info("delivery repaired after a presence or push-stream outage: %d frame(s) for %d user(s)",
                    queued, len(users))
        return queued
