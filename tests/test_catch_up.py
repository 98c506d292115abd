"""Catch-up on reconnect (`?since=`) and the unread badge's versions (issue 6).

A real node (the app `serve` builds, on a real socket under pytest-aiohttp) over the run's real Postgres
and Redis; events go through the worker's own `process_event` (store, then push through presence and the
node's stream) or the real worker in burst mode. Every socket's frames are checked for order, duplicates, gaps
and unread-count versions.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notify_server.core.settings import Settings
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.sessions import SessionStore
from notify_server.transport.frames import notification_frame
from notify_server.transport.push import PushItem, StreamPushTransport
from notify_server.web.app import create_app
from tests.helpers import process_one, run_worker_burst, worker_context
from workers.context import WorkerContext

WS_PATH = "/ws/notifications"
RESYNC = {"type": "resync", "data": {}}


def event(event_id: str, *users: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "CLAIM_REJECTED",
        "recipients": [{"user_id": user} for user in users],
        "data": {"provider_name": f"Dr. {event_id}", "claim_id": event_id},
    }


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[WorkerContext]:
    """What the worker's pipeline runs with."""
    async with worker_context(settings) as job_ctx:
        yield job_ctx


async def emit(ctx: WorkerContext, event_id: str, *users: str) -> None:
    result = await process_one(ctx, copy.deepcopy(event(event_id, *users)))
    assert result["status"] == "stored", result


async def stored_ids(db_pool: Any, user_id: str) -> list[str]:
    """This user's notification ids in storage order (seq)."""
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT notification_id FROM notifications WHERE recipient_id = %s ORDER BY seq", (user_id,))
        return [str(row[0]) for row in await cur.fetchall()]


async def node(aiohttp_client: Any, settings: Settings, node_id: str = "catch-up-node") -> TestClient:
    return await aiohttp_client(create_app(settings, node_id=node_id))


class Tab:
    """One socket and every frame it got, checked as they come: unread versions never go down."""

    def __init__(self, ws: ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.last_version = -1

    async def next(self, timeout_s: float = 5.0) -> dict[str, Any]:
        message = await self.ws.receive(timeout=timeout_s)
        assert message.type is WSMsgType.TEXT, (message.type, message.data)
        frame = orjson.loads(message.data)
        if frame["type"] == "unread_count":
            version = frame["data"]["version"]
            assert version > self.last_version, f"unread version went from {self.last_version} to {version}"
            self.last_version = version
        self.frames.append(frame)
        return frame

    async def quiet(self, timeout_s: float = 0.5) -> None:
        """Read until nothing comes for timeout_s (everything is recorded and checked)."""
        while True:
            try:
                await self.next(timeout_s)
            except TimeoutError:
                return

    async def until_notifications(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.notification_ids()) < count:
                await self.next(timeout_s)

    def notification_ids(self) -> list[str]:
        return [f["data"]["notification_id"] for f in self.frames if f["type"] == "notification"]

    def counts(self) -> list[int]:
        return [f["data"]["count"] for f in self.frames if f["type"] == "unread_count"]


async def open_tab(client: TestClient, token: str, since: str | None = None) -> Tab:
    params = {"token": token}
    if since is not None:
        params["since"] = since
    return Tab(await client.ws_connect(WS_PATH, params=params))


# ---------------------------------------------------------------- catch-up


async def test_since_replays_the_missed_notifications_oldest_first_after_the_count_and_before_live_ones(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, ctx: WorkerContext, db_pool: Any
) -> None:
    client = await node(aiohttp_client, settings)
    token = (await sessions.create("alice", 3600)).token
    for n in range(6):
        await emit(ctx, f"old-{n}", "alice")
    await emit(ctx, "bob-only", "bob")  # someone else's, never replayed to alice
    ids = await stored_ids(db_pool, "alice")

    tab = await open_tab(client, token, since=ids[2])
    first = await tab.next()
    assert first["type"] == "unread_count" and first["data"]["count"] == 6
    for _ in range(3):
        await tab.next()
    await emit(ctx, "live-1", "alice")
    await tab.until_notifications(4)
    await tab.quiet(0.3)

    live_id = (await stored_ids(db_pool, "alice"))[-1]
    assert [f["type"] for f in tab.frames] == ["unread_count", "notification", "notification", "notification",
                                               "notification", "unread_count"]
    assert tab.notification_ids() == ids[3:] + [live_id]
    assert tab.counts() == [6, 7]
    await tab.ws.close()


async def test_since_the_newest_notification_replays_nothing(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, ctx: WorkerContext, db_pool: Any
) -> None:
    client = await node(aiohttp_client, settings)
    token = (await sessions.create("alice", 3600)).token
    await emit(ctx, "e1", "alice")
    [newest] = await stored_ids(db_pool, "alice")

    tab = await open_tab(client, token, since=newest)
    await tab.next()
    await tab.quiet(0.3)

    assert [f["type"] for f in tab.frames] == ["unread_count"]


async def test_catch_up_has_no_duplicate_and_no_gap_while_events_keep_arriving(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, ctx: WorkerContext, db_pool: Any
) -> None:
    """Reconnects land at different moments of a stream of events (4 producers at once, like a worker's
    concurrent jobs): each socket gets every notification after `since` exactly once — the replay oldest
    first, then the live ones — and its unread versions only grow."""
    # Up to 105 are missed by the last reconnect: more than the default max_replay (100) would resync.
    client = await node(aiohttp_client, settings.replace(recovery={"max_replay": 500}))
    token = (await sessions.create("alice", 3600)).token
    for n in range(10):
        await emit(ctx, f"before-{n}", "alice")
    since = (await stored_ids(db_pool, "alice"))[4]

    produced = 0

    async def producer(lane: int) -> None:
        nonlocal produced
        for n in range(25):
            await emit(ctx, f"during-{lane}-{n}", "alice")
            produced += 1

    producers = [asyncio.create_task(producer(lane)) for lane in range(4)]
    tabs: list[Tab] = []
    for threshold in (0, 10, 30, 60, 90):  # reconnect at several points of the stream
        while produced < threshold and not all(p.done() for p in producers):
            await asyncio.sleep(0.002)
        tabs.append(await open_tab(client, token, since=since))
    await asyncio.gather(*producers)

    expected = (await stored_ids(db_pool, "alice"))[5:]
    assert len(expected) == 105
    for tab in tabs:
        await tab.until_notifications(len(expected))
        await tab.quiet(0.3)
        received = tab.notification_ids()
        assert tab.frames[0]["type"] == "unread_count"
        assert len(received) == len(set(received)), "a notification was sent twice"
        assert set(received) == set(expected), "a notification is missing or foreign"
        # The replay comes first and in order: the received sequence starts with the stored order.
        replayed = 0
        while replayed < len(received) and received[replayed] == expected[replayed]:
            replayed += 1
        assert replayed >= 5, "the 5 notifications stored before the reconnect must be replayed first, in order"
        assert tab.counts()[-1] == 110
        await tab.ws.close()


async def test_a_notification_replayed_by_catch_up_is_not_pushed_again_afterwards(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, ctx: WorkerContext, db_pool: Any,
    redis_client: Redis, repository: NotificationRepository,
) -> None:
    """A worker commits, then looks up presence and writes the push job. A reconnect whose catch-up runs
    between the two replays the notification, and the push then arrives as well. Here the event is
    stored while alice is offline (nothing pushed), she reconnects and gets it replayed, then the push
    job the worker writes once it sees her present is written to her node's stream."""
    client = await node(aiohttp_client, settings)
    token = (await sessions.create("alice", 3600)).token
    await emit(ctx, "seen", "alice")
    [since] = await stored_ids(db_pool, "alice")
    await emit(ctx, "in-flight", "alice")  # committed; alice is offline, so not pushed (yet)
    [in_flight] = await repository.list_since("alice", since, limit=10)
    unread = await repository.unread_state("alice")

    tab = await open_tab(client, token, since=since)
    await tab.next()
    await tab.until_notifications(1)  # the replay
    transport = StreamPushTransport(redis_client, maxlen=1000, stream_ttl_s=60, job_expiry_s=30)
    await transport.enqueue({"catch-up-node": [PushItem(
        "alice", notification_frame(in_flight), in_flight.notification_id, unread.count, unread.version,
    )]})
    await tab.quiet(0.5)

    assert tab.notification_ids() == [in_flight.notification_id]


async def test_at_most_max_replay_are_replayed(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, ctx: WorkerContext, db_pool: Any
) -> None:
    client = await node(aiohttp_client, settings.replace(recovery={"max_replay": 3}))
    token = (await sessions.create("alice", 3600)).token
    for n in range(5):
        await emit(ctx, f"e{n}", "alice")
    ids = await stored_ids(db_pool, "alice")

    exactly_three = await open_tab(client, token, since=ids[1])
    await exactly_three.next()
    await exactly_three.quiet(0.3)
    assert exactly_three.notification_ids() == ids[2:]
    assert RESYNC not in exactly_three.frames

    four = await open_tab(client, token, since=ids[0])
    await four.next()
    await four.quiet(0.3)
    assert [f["type"] for f in four.frames] == ["unread_count", "resync"]
    assert four.frames[1] == RESYNC


@pytest.mark.parametrize(
    "since",
    ["random-uuid", "other-users-id", "not-a-uuid", "' OR 1=1 --", "%00", "é" * 300],
)
async def test_unknown_since_gets_a_resync_frame_and_the_socket_stays_live(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, ctx: WorkerContext, db_pool: Any, since: str
) -> None:
    client = await node(aiohttp_client, settings)
    token = (await sessions.create("alice", 3600)).token
    await emit(ctx, "bobs", "bob")
    if since == "random-uuid":
        since = str(uuid.uuid4())
    elif since == "other-users-id":
        [since] = await stored_ids(db_pool, "bob")

    tab = await open_tab(client, token, since=since)
    await tab.next()
    assert await tab.next() == RESYNC
    await emit(ctx, "live", "alice")
    await tab.until_notifications(1)
    await tab.quiet(0.3)
    assert [f["type"] for f in tab.frames] == ["unread_count", "resync", "notification", "unread_count"]


# ---------------------------------------------------------------- unread_count versions


async def test_a_burst_of_twenty_events_is_coalesced_into_fewer_counts_ending_at_the_final_one(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    client = await node(aiohttp_client, settings)
    token = (await sessions.create("alice", 3600)).token
    tabs = [await open_tab(client, token) for _ in range(2)]
    for tab in tabs:
        assert (await tab.next())["data"]["count"] == 0

    for n in range(20):
        assert await enqueue_event(redis_client, event(f"burst-{n}", "alice"), queue_name=settings.queues.events)
    await run_worker_burst(settings)

    for tab in tabs:
        await tab.until_notifications(20)
        await tab.quiet(0.5)
        assert len(set(tab.notification_ids())) == 20
        counts = tab.counts()[1:]
        print(f"\n[figures] burst of 20 events: {len(counts)} unread_count frames on this tab")
        assert 1 <= len(counts) < 20, f"{len(counts)} unread_count frames for 20 events: not coalesced"
        assert counts[-1] == 20
        assert counts == sorted(counts)


async def test_unread_versions_only_grow_on_every_socket_through_pushes_and_reads(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, ctx: WorkerContext
) -> None:
    """Two nodes, two tabs each; events and mark-read / read-all interleaved from both nodes. Every tab
    ends on the same final count and version, and none ever sees a version go down (Tab checks)."""
    node1 = await node(aiohttp_client, settings, "n1")
    node2 = await node(aiohttp_client, settings, "n2")
    token = (await sessions.create("alice", 3600)).token
    tabs = [await open_tab(c, token) for c in (node1, node1, node2, node2)]
    for tab in tabs:
        await tab.next()
    headers = {"Authorization": f"Bearer {token}"}

    async def events() -> None:
        for n in range(30):
            await emit(ctx, f"v-{n}", "alice")

    async def reads() -> None:
        for n in range(15):
            rest = node1 if n % 2 else node2
            listed = await (await rest.get("/api/notifications", params={"unread_only": "true", "limit": "1"},
                                           headers=headers)).json()
            if listed["items"]:
                response = await rest.post(f"/api/notifications/{listed['items'][0]['notification_id']}/read",
                                           headers=headers)
                assert response.status == 200
            if n == 10:
                assert (await rest.post("/api/notifications/read-all", headers=headers)).status == 200
            await asyncio.sleep(0.005)

    await asyncio.gather(events(), reads())
    final = await (await node1.get("/api/notifications/unread-count", headers=headers)).json()
    for tab in tabs:
        await tab.until_notifications(30)
        await tab.quiet(0.5)
        assert tab.counts()[-1] == final["count"]
    assert len({tab.last_version for tab in tabs}) == 1
