"""Delivery repair after a node's presence or push stream was broken (notify_server.transport.repair): a socket that
stayed open through a Redis outage still gets what its user was sent meanwhile. The connection manager
runs on fake sockets (as its unit tests do); the notifications are real rows in the test's Postgres."""

from __future__ import annotations

import asyncio
import datetime as dt

from notify_server.core.supervisor import LoopHealth
from notify_server.storage.notifications import NotificationRepository
from notify_server.transport.connections import NotificationWebSocketManager
from notify_server.transport.repair import REPLAY_PER_USER, PushGapRepair
from tests.fakes import FakeSocket, wait_until
from tests.helpers import store_one
from tests.test_notifications_repository import new_event


async def run_repair(repair: PushGapRepair) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(repair.run(LoopHealth("delivery-repair")))


async def test_a_socket_open_through_an_outage_gets_what_was_stored_meanwhile_once_the_loops_are_back(
    repository: NotificationRepository,
) -> None:
    manager = NotificationWebSocketManager(repository.unread_state)
    alice, bob = FakeSocket("alice"), FakeSocket("bob")
    await manager.register_connection("alice", alice)
    await manager.register_connection("bob", bob)
    repair = PushGapRepair(manager, repository)
    task = await run_repair(repair)
    try:
        repair.loop_changed("presence-refresher", False)  # Redis went away: presence may lapse
        repair.loop_changed("push-consumer", False)
        stored = await store_one(repository, new_event("during-outage", "alice"))
        repair.loop_changed("presence-refresher", True)
        await asyncio.sleep(0.05)
        assert alice.sent == []  # not while a watched loop is still down
        repair.loop_changed("push-consumer", True)

        await wait_until(lambda: len(alice.sent) == 2, what="the repaired frames")
        notification, count = alice.frames()
        assert notification["type"] == "notification"
        assert notification["data"]["notification_id"] == stored.notifications[0].notification_id
        assert count == {"type": "unread_count", "data": {"count": 1, "unseen": 1, "version": 1}}
        assert bob.sent == []  # nothing of anyone else's, nothing when there was nothing
    finally:
        task.cancel()


async def test_a_user_with_more_than_the_replay_limit_gets_resync(repository: NotificationRepository) -> None:
    manager = NotificationWebSocketManager(repository.unread_state)
    tab = FakeSocket("alice")
    await manager.register_connection("alice", tab)
    for n in range(REPLAY_PER_USER):
        await store_one(repository, new_event(f"e{n}", "alice"))

    await PushGapRepair(manager, repository).replay(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))

    await wait_until(lambda: len(tab.sent) == 2, what="resync and count")
    assert [frame["type"] for frame in tab.frames()] == ["resync", "unread_count"]


async def test_rows_older_than_the_outage_are_not_replayed(repository: NotificationRepository) -> None:
    manager = NotificationWebSocketManager(repository.unread_state)
    tab = FakeSocket("alice")
    await manager.register_connection("alice", tab)
    await store_one(repository, new_event("before", "alice"))

    await PushGapRepair(manager, repository).replay(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))

    await asyncio.sleep(0.05)
    assert tab.sent == []
