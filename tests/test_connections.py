"""NotificationWebSocketManager (SPEC §7 "Connection manager") with fake sockets.

Pushes only queue frames; a writer task per socket sends them. So every assertion about what a socket
got waits (yielding to the loop) until the writer has run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from notify_server.core.constants import CLOSE_TOO_SLOW
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient, UnreadState
from notify_server.transport.connections import NotificationWebSocketManager
from notify_server.transport.delivery import deliver
from notify_server.transport.push import PushItem, PushJob
from tests.fakes import FakeSocket, wait_until
from tests.helpers import insert

NOTIFICATION = {"type": "notification", "data": {"notification_id": "n-1", "title": "Claim Rejected"}}


async def settle() -> None:
    """Let writer and close tasks run (each send is one await on a fake socket)."""
    for _ in range(10):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- the map


async def test_register_connection_adds_the_socket_to_the_map() -> None:
    manager = NotificationWebSocketManager()
    ws = FakeSocket()

    state = await manager.register_connection("u1", ws, session_hash="h1")

    assert manager.connections == {"u1": {ws}}
    assert state.user_id == "u1" and state.session_hash == "h1"
    assert manager.state_of(ws) is state


async def test_register_connection_supports_several_connections_per_user() -> None:
    manager = NotificationWebSocketManager()
    tabs = [FakeSocket(f"tab{i}") for i in range(3)]
    other = FakeSocket("other")

    for ws in tabs:
        await manager.register_connection("u1", ws)
    await manager.register_connection("u2", other)

    assert manager.connections == {"u1": set(tabs), "u2": {other}}
    assert manager.count("u1") == 3
    assert manager.connection_count == 4


async def test_remove_connection_removes_only_that_socket() -> None:
    manager = NotificationWebSocketManager()
    first, second = FakeSocket("first"), FakeSocket("second")
    await manager.register_connection("u1", first)
    await manager.register_connection("u1", second)

    await manager.remove_connection("u1", first)

    assert manager.connections == {"u1": {second}}
    assert manager.state_of(first) is None


async def test_remove_connection_drops_the_user_when_the_last_socket_goes() -> None:
    manager = NotificationWebSocketManager()
    ws = FakeSocket()
    await manager.register_connection("u1", ws)

    await manager.remove_connection("u1", ws)
    await manager.remove_connection("u1", ws)  # every path out of a handler may call it again

    assert "u1" not in manager.connections
    assert manager.connection_count == 0


async def test_presence_hooks_run_on_first_and_last_connection_only() -> None:
    events: list[tuple[str, str]] = []

    async def present(user_id: str) -> None:
        events.append(("present", user_id))

    async def absent(user_id: str) -> None:
        events.append(("absent", user_id))

    manager = NotificationWebSocketManager(on_first_connection=present, on_last_connection=absent)
    first, second = FakeSocket("first"), FakeSocket("second")
    await manager.register_connection("u1", first)
    await manager.register_connection("u1", second)
    await manager.remove_connection("u1", first)
    assert events == [("present", "u1")]

    await manager.remove_connection("u1", second)
    assert events == [("present", "u1"), ("absent", "u1")]


# ---------------------------------------------------------------- push_to_user


async def test_push_to_user_reaches_every_tab_with_one_serialised_string() -> None:
    manager = NotificationWebSocketManager()
    tabs = [FakeSocket(f"tab{i}") for i in range(3)]
    for ws in tabs:
        await manager.register_connection("u1", ws)

    queued = await manager.push_to_user("u1", NOTIFICATION)
    await wait_until(lambda: all(ws.sent for ws in tabs), what="every tab to get the frame")

    assert queued == 3
    texts = [ws.sent[0] for ws in tabs]
    assert orjson.loads(texts[0]) == NOTIFICATION
    # Serialised once: the very same str object went to every socket.
    assert all(text is texts[0] for text in texts)


async def test_push_to_user_reaches_no_other_user() -> None:
    manager = NotificationWebSocketManager()
    mine, theirs = FakeSocket("mine"), FakeSocket("theirs")
    await manager.register_connection("u1", mine)
    await manager.register_connection("u2", theirs)

    await manager.push_to_user("u1", NOTIFICATION)
    await wait_until(lambda: bool(mine.sent), what="u1's frame")
    await settle()

    assert theirs.sent == []


async def test_push_to_user_is_a_noop_without_connections() -> None:
    manager = NotificationWebSocketManager()
    bystander = FakeSocket()
    await manager.register_connection("u2", bystander)

    assert await manager.push_to_user("nobody", NOTIFICATION) == 0
    await settle()

    assert "nobody" not in manager.connections
    assert bystander.sent == []


async def test_push_to_user_sends_a_string_payload_as_is() -> None:
    manager = NotificationWebSocketManager()
    ws = FakeSocket()
    await manager.register_connection("u1", ws)

    await manager.push_to_user("u1", '{"type":"x"}')
    await wait_until(lambda: bool(ws.sent))

    assert ws.sent == ['{"type":"x"}']


async def test_frames_reach_a_socket_in_push_order() -> None:
    manager = NotificationWebSocketManager()
    ws = FakeSocket()
    await manager.register_connection("u1", ws)

    for i in range(20):
        await manager.push_to_user("u1", {"type": "n", "i": i})
    await wait_until(lambda: len(ws.sent) == 20)

    assert [frame["i"] for frame in ws.frames()] == list(range(20))


# ---------------------------------------------------------------- push_unread_count


async def test_push_unread_count_sends_the_count_from_the_repository(
    repository: NotificationRepository,
) -> None:
    await insert(repository,
        NewNotifications(
            event_id="evt-1", event_type="CLAIM_REJECTED", title="t", body="b", priority="HIGH",
            action_url=None, metadata={}, recipients=[Recipient("u1"), Recipient("u2")],
        )
    )
    await insert(repository,
        NewNotifications(
            event_id="evt-2", event_type="CLAIM_REJECTED", title="t", body="b", priority="HIGH",
            action_url=None, metadata={}, recipients=[Recipient("u1")],
        )
    )
    manager = NotificationWebSocketManager(repository.count_unread)
    tabs = [FakeSocket("a"), FakeSocket("b")]
    for ws in tabs:
        await manager.register_connection("u1", ws)

    assert await manager.push_unread_count("u1") == 2
    await wait_until(lambda: all(ws.sent for ws in tabs))

    for ws in tabs:
        assert ws.frames() == [{"type": "unread_count", "data": {"count": 2}}]


async def test_push_unread_count_uses_a_given_count_without_querying() -> None:
    async def must_not_be_called(user_id: str) -> int:
        raise AssertionError("the counter was queried")

    manager = NotificationWebSocketManager(must_not_be_called)
    ws = FakeSocket()
    await manager.register_connection("u1", ws)

    await manager.push_unread_count("u1", 7)
    await wait_until(lambda: bool(ws.sent))

    assert ws.frames() == [{"type": "unread_count", "data": {"count": 7}}]


async def test_push_unread_count_does_not_query_for_a_user_without_connections() -> None:
    queried: list[str] = []

    async def count_unread(user_id: str) -> int:
        queried.append(user_id)
        return 1

    manager = NotificationWebSocketManager(count_unread)

    assert await manager.push_unread_count("nobody") == 0
    assert queried == []


# ---------------------------------------------------------------- slow and dead sockets


async def test_a_failing_socket_does_not_stop_the_others() -> None:
    manager = NotificationWebSocketManager()
    dead = FakeSocket("dead", fail=True)
    healthy = FakeSocket("healthy")
    other_user = FakeSocket("other-user")
    await manager.register_connection("u1", dead)
    await manager.register_connection("u1", healthy)
    await manager.register_connection("u2", other_user)

    await manager.push_to_user("u1", NOTIFICATION)
    await manager.push_to_user("u2", NOTIFICATION)
    await wait_until(lambda: bool(healthy.sent) and bool(other_user.sent) and dead.send_attempts > 0)
    await manager.push_to_user("u1", {"type": "second"})
    await wait_until(lambda: len(healthy.sent) == 2)

    assert dead.sent == []
    assert [f["type"] for f in healthy.frames()] == ["notification", "second"]
    assert other_user.frames() == [NOTIFICATION]


async def test_a_socket_whose_send_blocks_does_not_delay_the_others() -> None:
    manager = NotificationWebSocketManager()
    stuck = FakeSocket("stuck", block=True)
    sibling = FakeSocket("sibling")
    other_user = FakeSocket("other-user")
    await manager.register_connection("u1", stuck)
    await manager.register_connection("u1", sibling)
    await manager.register_connection("u2", other_user)

    for i in range(5):
        # Each push returns at once: it only queues, whatever the state of the stuck socket.
        await asyncio.wait_for(manager.push_to_user("u1", {"type": "n", "i": i}), 0.1)
        await asyncio.wait_for(manager.push_to_user("u2", {"type": "n", "i": i}), 0.1)
    await wait_until(lambda: len(sibling.sent) == 5 and len(other_user.sent) == 5)

    assert stuck.sent == []
    assert not stuck.closed

    stuck.unblock()
    await wait_until(lambda: len(stuck.sent) == 5, what="the stuck socket to catch up")
    assert [f["i"] for f in stuck.frames()] == list(range(5))


async def test_send_queue_overflow_closes_only_that_socket_with_4008() -> None:
    manager = NotificationWebSocketManager(send_queue_max=3)
    stuck = FakeSocket("stuck", block=True)
    sibling = FakeSocket("sibling")
    await manager.register_connection("u1", stuck)
    await manager.register_connection("u1", sibling)

    # The stuck socket's writer holds the first frame; three more fill its outbox; the fifth overflows.
    for i in range(5):
        await manager.push_to_user("u1", {"type": "n", "i": i})
        await wait_until(lambda: len(sibling.sent) == i + 1, what="the sibling to drain")

    await wait_until(lambda: stuck.closed, what="the stuck socket to be closed")
    assert stuck.close_code == CLOSE_TOO_SLOW
    assert not sibling.closed
    assert [f["i"] for f in sibling.frames()] == list(range(5))

    # A closing socket gets nothing more queued; the sibling still gets everything.
    await manager.push_to_user("u1", {"type": "n", "i": 5})
    await wait_until(lambda: len(sibling.sent) == 6)
    stuck.unblock()
    await settle()
    assert stuck.sent == []


# ---------------------------------------------------------------- hold and release (first frame first)


async def test_frames_pushed_while_held_wait_behind_the_first_frame() -> None:
    manager = NotificationWebSocketManager()
    ws = FakeSocket()
    await manager.register_connection("u1", ws, hold=True)

    await manager.push_to_user("u1", NOTIFICATION)
    await settle()
    assert ws.sent == []

    manager.release(ws, ['{"type":"unread_count","data":{"count":1}}'])
    await wait_until(lambda: len(ws.sent) == 2)

    assert [f["type"] for f in ws.frames()] == ["unread_count", "notification"]


async def test_remove_connection_stops_a_pending_writer() -> None:
    manager = NotificationWebSocketManager()
    stuck = FakeSocket("stuck", block=True)
    await manager.register_connection("u1", stuck)
    await manager.push_to_user("u1", NOTIFICATION)
    await manager.push_to_user("u1", NOTIFICATION)
    await settle()

    await manager.remove_connection("u1", stuck)
    stuck.unblock()
    await settle()

    assert stuck.sent == []
    assert manager.connections == {} and manager.connection_count == 0


async def test_close_all_closes_every_socket_with_the_code() -> None:
    manager = NotificationWebSocketManager()
    tabs = [FakeSocket("a"), FakeSocket("b"), FakeSocket("c")]
    await manager.register_connection("u1", tabs[0])
    await manager.register_connection("u1", tabs[1])
    await manager.register_connection("u2", tabs[2])

    await manager.close_all(1001, b"server shutting down")

    assert [ws.close_code for ws in tabs] == [1001, 1001, 1001]


@pytest.mark.parametrize("code", [4001, CLOSE_TOO_SLOW])
async def test_close_soon_closes_once(code: int) -> None:
    manager = NotificationWebSocketManager()
    ws = FakeSocket()
    closes: list[int] = []
    original_close = ws.close

    async def counting_close(*, code: int = 1000, message: bytes = b"") -> bool:
        closes.append(code)
        return await original_close(code=code, message=message)

    ws.close = counting_close  # type: ignore[method-assign]
    await manager.register_connection("u1", ws)

    manager.close_soon(ws, code)
    manager.close_soon(ws, code)
    await manager.wait_closing()

    assert closes == [code]


# ---------------------------------------------------------------- deliver: the push consumer's batch


class RecordingManager(NotificationWebSocketManager):
    """The real manager, noting which of the seed's methods the push consumer's batch calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    async def push_to_user(self, user_id: str, payload: Any, notification_id: str | None = None) -> int:
        self.calls.append(("push_to_user", user_id))
        return await super().push_to_user(user_id, payload, notification_id)

    async def push_unread_count(self, user_id: str, unread: UnreadState | int | None = None) -> int:
        self.calls.append(("push_unread_count", user_id))
        return await super().push_unread_count(user_id, unread)


def _job(*items: PushItem) -> PushJob:
    return PushJob(items=list(items), enqueued_at=0.0)


async def test_deliver_runs_every_frame_through_push_to_user_and_each_count_once_through_push_unread_count() -> None:
    manager = RecordingManager()
    alice, bob = FakeSocket("alice"), FakeSocket("bob")
    await manager.register_connection("alice", alice)
    await manager.register_connection("bob", bob)

    await deliver(manager, [
        _job(PushItem("alice", '{"type":"notification","n":1}', "n1", 1, 7),
             PushItem("bob", '{"type":"notification","n":2}', "n2", 4, 3),
             PushItem("carol", '{"type":"notification","n":3}', "n3", 1, 1)),  # not on this node
        _job(PushItem("alice", '{"type":"notification","n":4}', "n4", 2, 8),
             PushItem("alice", unread_count=1, unread_version=6)),  # older than version 8: dropped
    ])
    await wait_until(lambda: len(alice.sent) == 3 and len(bob.sent) == 2, what="every frame")

    assert [f.get("n") for f in alice.frames()[:2]] == [1, 4]
    assert alice.frames()[2] == {"type": "unread_count", "data": {"count": 2, "version": 8}}
    assert bob.frames()[1] == {"type": "unread_count", "data": {"count": 4, "version": 3}}
    assert manager.calls == [
        ("push_to_user", "alice"), ("push_to_user", "bob"), ("push_to_user", "carol"), ("push_to_user", "alice"),
        ("push_unread_count", "alice"), ("push_unread_count", "bob"), ("push_unread_count", "carol"),
    ]
