"""Delivery end to end (SPEC §1, §7): producer -> real arq worker -> per-node push stream -> every tab of
the recipients on every node, and nobody else; presence; the push streams themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from notify_server.core.constants import CLOSE_GOING_AWAY, PUSH_STREAM_PREFIX
from notify_server.core.settings import Settings
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.sessions import SessionStore
from notify_server.transport.presence import Presence
from notify_server.transport.push import PushItem, PushJob, StreamPushTransport, decode_job, encode_job, stream_key
from notify_server.web import appkeys
from notify_server.web.app import create_app
from tests.fakes import (
    assert_nothing_arrives,
    claim_rejected,
    connect_and_count,
    expect_close,
    receive_frame,
    receive_raw,
    receive_unread_count,
    start_node,
    wait_until,
    wait_until_async,
)
from tests.helpers import run_worker_burst

PAYLOAD_KEYS = {
    "notification_id", "title", "body", "priority", "action_url", "event_type", "metadata", "created_at",
}


async def emit(redis_client: Redis, settings: Settings, event: dict[str, Any]) -> None:
    """As a producer would, then let a real worker process the queue."""
    assert await enqueue_event(redis_client, event, queue_name=settings.queues.events) is not None
    await run_worker_burst(settings)


async def push_jobs(redis_client: Redis, node_id: str) -> list[PushJob]:
    return [decode_job(fields[b"j"]) for _id, fields in await redis_client.xrange(stream_key(node_id))]


async def push_stream_keys(redis_client: Redis) -> list[bytes]:
    return sorted(await redis_client.keys(PUSH_STREAM_PREFIX + "*"))


async def receive_notification_and_count(ws: Any) -> tuple[dict[str, Any], int]:
    """A pushed notification comes with the recipient's new unread count."""
    notification = await receive_frame(ws)
    assert notification["type"] == "notification", notification
    count = await receive_frame(ws)
    assert count["type"] == "unread_count", count
    return notification["data"], count["data"]["count"]


# ---------------------------------------------------------------- every tab, every node, nobody else


async def test_notification_reaches_every_tab_of_the_user_on_every_node_and_nobody_else(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    alice = await sessions.create("alice", ttl_s=3600)
    bob = await sessions.create("bob", ttl_s=3600)
    node1 = await start_node(aiohttp_client, settings, "n1")
    node2 = await start_node(aiohttp_client, settings, "n2")
    alice_on_1, _ = await connect_and_count(node1, alice.token)
    alice_on_2, _ = await connect_and_count(node2, alice.token)
    bob_on_1, _ = await connect_and_count(node1, bob.token)
    bob_on_2, _ = await connect_and_count(node2, bob.token)

    await emit(redis_client, settings, claim_rejected("evt-1", "alice"))

    first, count1 = await receive_notification_and_count(alice_on_1)
    second, count2 = await receive_notification_and_count(alice_on_2)
    assert first == second
    assert first["title"] == "Claim Rejected"
    assert first["body"] == "Your claim for Dr. Smith has been rejected."
    assert count1 == count2 == 1
    await assert_nothing_arrives(bob_on_1, 0.5)
    await assert_nothing_arrives(bob_on_2, 0.1)


async def test_notification_frame_has_exactly_the_eight_keys_and_nothing_private(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    user_id, email, event_id = "recipient-7c1d", "secret.person@example.com", "evt-private-91f2"
    session = await sessions.create(user_id, ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    await emit(
        redis_client, settings,
        claim_rejected(event_id, {"user_id": user_id, "email": email}, metadata={"claim": {"id": "abc123"}}),
    )

    raw = await receive_raw(ws)
    for private in (email, event_id, user_id, "recipient", "email", "event_id", "seq"):
        assert private not in raw
    frame = orjson.loads(raw)
    assert frame["type"] == "notification"
    data = frame["data"]
    assert set(data) == PAYLOAD_KEYS
    assert data["event_type"] == "CLAIM_REJECTED"
    assert data["priority"] == "HIGH"
    assert data["action_url"] == "/claims/abc123"
    assert data["metadata"] == {"claim": {"id": "abc123"}}
    assert data["created_at"].endswith("Z")
    assert await receive_unread_count(ws) == 1


async def test_offline_users_notification_is_stored_and_counted_in_the_first_frame(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis, repository: Any
) -> None:
    session = await sessions.create("carol", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)

    await emit(redis_client, settings, claim_rejected("evt-1", "carol"))
    await emit(redis_client, settings, claim_rejected("evt-2", "carol"))

    assert await repository.count_unread("carol") == 2
    ws, count = await connect_and_count(client, session.token)
    assert count == 2
    await assert_nothing_arrives(ws, 0.3)  # stored, counted, not pushed


async def test_unread_count_after_mark_read_and_read_all_reaches_every_node(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("alice", ttl_s=3600)
    node1 = await start_node(aiohttp_client, settings, "n1")
    node2 = await start_node(aiohttp_client, settings, "n2")
    for event_id in ("evt-1", "evt-2", "evt-3"):
        await emit(redis_client, settings, claim_rejected(event_id, "alice"))
    on_1, count = await connect_and_count(node1, session.token)
    on_2, _ = await connect_and_count(node2, session.token)
    assert count == 3
    auth = {"Authorization": "Bearer " + session.token}
    listed = await (await node1.get("/api/notifications", headers=auth)).json()

    response = await node1.post(f"/api/notifications/{listed['items'][0]['notification_id']}/read", headers=auth)
    assert response.status == 200

    for ws in (on_1, on_2):  # what changed (issue 18), then the count
        assert (await receive_frame(ws))["type"] == "notifications_updated"
        assert await receive_unread_count(ws) == 2

    response = await node2.post("/api/notifications/read-all", headers=auth)
    assert await response.json() == {"updated": 2}

    for ws in (on_1, on_2):
        assert (await receive_frame(ws))["type"] == "notifications_updated"
        assert await receive_unread_count(ws) == 0


# ---------------------------------------------------------------- push jobs: one per node, none for offline users


async def test_one_push_job_per_node_per_event_with_several_recipients(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    node1 = await start_node(aiohttp_client, settings, "n1")
    node2 = await start_node(aiohttp_client, settings, "n2")
    tabs = {}
    for user_id, node in (("u1", node1), ("u2", node1), ("u3", node1), ("u4", node2)):
        session = await sessions.create(user_id, ttl_s=3600)
        tabs[user_id], _ = await connect_and_count(node, session.token)

    await emit(redis_client, settings, claim_rejected("evt-1", "u1", "u2", "u3", "u4", "offline-u5"))

    (job1,) = await push_jobs(redis_client, "n1")
    (job2,) = await push_jobs(redis_client, "n2")
    assert sorted(item.user_id for item in job1.items) == ["u1", "u2", "u3"]
    assert [item.user_id for item in job2.items] == ["u4"]
    assert await push_stream_keys(redis_client) == [b"notify:push:n1", b"notify:push:n2"]
    for ws in tabs.values():
        data, count = await receive_notification_and_count(ws)
        assert data["event_type"] == "CLAIM_REJECTED" and count == 1


async def test_nothing_is_enqueued_to_push_streams_for_offline_users(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    online = await sessions.create("online", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, online.token)

    await emit(redis_client, settings, claim_rejected("evt-1", "offline-1", "offline-2"))

    assert await push_stream_keys(redis_client) == []
    await assert_nothing_arrives(ws, 0.3)


async def test_a_retried_event_is_not_pushed_twice(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("alice", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)
    await emit(redis_client, settings, claim_rejected("evt-1", "alice"))
    await receive_notification_and_count(ws)

    # The same event again under another arq job id (a producer retrying after a timeout).
    await enqueue_event(redis_client, claim_rejected("evt-1", "alice"), queue_name=settings.queues.events)
    await redis_client.delete("arq:result:evt-1")
    await enqueue_event(redis_client, claim_rejected("evt-1", "alice"), queue_name=settings.queues.events)
    await run_worker_burst(settings)

    assert len(await push_jobs(redis_client, "n1")) == 1
    await assert_nothing_arrives(ws, 0.3)


# ---------------------------------------------------------------- push streams


async def read_jobs(transport: StreamPushTransport, node_id: str) -> AsyncIterator[list[PushJob]]:
    """The node's read loop (notify_server.transport.delivery.PushConsumer) as an iterator of non-empty batches."""
    last_id = await transport.newest_id(node_id)
    while True:
        last_id, jobs = await transport.read(node_id, last_id)
        if jobs:
            yield jobs


async def test_push_stream_drops_entries_older_than_job_expiry(redis_client: Redis, settings: Settings) -> None:
    expiry_s = 0.2
    producer = StreamPushTransport(redis_client, maxlen=100, stream_ttl_s=60, job_expiry_s=30)
    consumer = StreamPushTransport(redis_client, maxlen=100, stream_ttl_s=60, job_expiry_s=expiry_s, read_block_ms=50)
    jobs = read_jobs(consumer, "n1")
    # The consumer starts after what the stream holds; probe until it is reading.
    first = asyncio.ensure_future(anext(jobs))
    while not first.done():
        await producer.enqueue({"n1": [PushItem("probe", frame="{}")]})
        await asyncio.wait({first}, timeout=0.05)
    assert {item.user_id for job in first.result() for item in job.items} == {"probe"}
    dropped_before = consumer.dropped_expired

    # While the consumer is not reading, one job ages past the expiry; another is fresh.
    await producer.enqueue({"n1": [PushItem("stale", frame="{}")]})
    await asyncio.sleep(expiry_s * 1.5)
    await producer.enqueue({"n1": [PushItem("fresh", unread_count=3)]})
    batch = await asyncio.wait_for(anext(jobs), 5)

    assert [item for job in batch for item in job.items] == [PushItem("fresh", unread_count=3)]
    assert consumer.dropped_expired - dropped_before == 1
    await jobs.aclose()


async def test_push_stream_drops_an_entry_written_with_an_old_id(redis_client: Redis, settings: Settings) -> None:
    transport = StreamPushTransport(redis_client, maxlen=100, stream_ttl_s=60, job_expiry_s=30, read_block_ms=50)
    jobs = read_jobs(transport, "n1")
    next_batch = asyncio.ensure_future(anext(jobs))
    db = int(redis_client.connection_pool.connection_kwargs.get("db", 0))

    async def reading() -> bool:  # past its start position (empty stream: from the beginning)
        clients = await redis_client.client_list()
        return any(int(c.get("db", -1)) == db and c.get("cmd") == "xread" for c in clients)

    await wait_until_async(reading, what="the consumer to block on XREAD")
    old_ms = int((time.time() - 3600) * 1000)
    old_job = encode_job([PushItem("old", frame="{}")], old_ms / 1000)
    await redis_client.xadd(stream_key("n1"), {b"j": old_job}, id=f"{old_ms}-0")
    await transport.enqueue({"n1": [PushItem("new", frame="{}")]})

    batch = await asyncio.wait_for(next_batch, 5)

    assert [item.user_id for job in batch for item in job.items] == ["new"]
    assert transport.dropped_expired == 1
    await jobs.aclose()


async def test_node_delivers_pushes_from_its_own_stream_only(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("alice", ttl_s=3600)
    node1 = await start_node(aiohttp_client, settings, "n1")
    node2 = await start_node(aiohttp_client, settings, "n2")
    on_1, _ = await connect_and_count(node1, session.token)
    on_2, _ = await connect_and_count(node2, session.token)
    transport = StreamPushTransport(redis_client, maxlen=100, stream_ttl_s=60, job_expiry_s=30)

    await transport.enqueue({"n2": [PushItem("alice", unread_count=42)]})

    assert await receive_unread_count(on_2) == 42
    await assert_nothing_arrives(on_1, 0.3)


# ---------------------------------------------------------------- presence


async def test_presence_shows_the_node_while_the_user_has_a_socket(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("alice", ttl_s=3600)
    presence = Presence(redis_client, settings.presence.ttl_s)
    node1 = await start_node(aiohttp_client, settings, "n1")
    node2 = await start_node(aiohttp_client, settings, "n2")
    assert await presence.nodes_for_users(["alice"]) == {}

    first, _ = await connect_and_count(node1, session.token)
    second, _ = await connect_and_count(node1, session.token)
    assert await presence.nodes_for_users(["alice"]) == {"n1": ["alice"]}
    on_2, _ = await connect_and_count(node2, session.token)
    assert await presence.nodes_for_users(["alice", "bob"]) == {"n1": ["alice"], "n2": ["alice"]}

    # Not the last socket of alice on n1: n1 still holds her.
    await first.close()
    await wait_until(lambda: node1.app[appkeys.MANAGER].count("alice") == 1)
    assert await presence.nodes_for_users(["alice"]) == {"n1": ["alice"], "n2": ["alice"]}
    for ws in (second, on_2):
        await ws.close()


async def test_presence_no_longer_shows_the_node_after_the_last_socket_closes(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("alice", ttl_s=3600)
    presence = Presence(redis_client, settings.presence.ttl_s)
    node1 = await start_node(aiohttp_client, settings, "n1")
    node2 = await start_node(aiohttp_client, settings, "n2")
    on_1, _ = await connect_and_count(node1, session.token)
    on_2, _ = await connect_and_count(node2, session.token)

    await on_1.close()
    await wait_until(lambda: node1.app[appkeys.MANAGER].connections == {})

    async def only_on_n2() -> bool:
        return await presence.nodes_for_users(["alice"]) == {"n2": ["alice"]}

    await wait_until_async(only_on_n2, timeout_s=1.0, what="n1's presence of alice to go")
    await on_2.close()


async def test_presence_ignores_a_field_whose_time_has_passed(redis_client: Redis, settings: Settings) -> None:
    presence = Presence(redis_client, ttl_s=30)
    await presence.add("live-node", ["alice"])
    await redis_client.hset("notify:presence:user:alice", "dead-node", int(time.time()) - 1)

    assert await presence.nodes_for_users(["alice"]) == {"live-node": ["alice"]}


async def test_a_stopping_node_closes_its_sockets_with_1001_and_leaves_no_presence_or_stream(
    settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("alice", ttl_s=3600)
    presence = Presence(redis_client, settings.presence.ttl_s)
    client = TestClient(TestServer(create_app(settings, node_id="n1")))
    await client.start_server()
    try:
        ws, _ = await connect_and_count(client, session.token)
        await StreamPushTransport(redis_client, maxlen=100, stream_ttl_s=60, job_expiry_s=30).enqueue(
            {"n1": [PushItem("alice", unread_count=1)]}
        )
        assert await receive_unread_count(ws) == 1
        assert await push_stream_keys(redis_client) == [b"notify:push:n1"]
        closed = asyncio.ensure_future(expect_close(ws, CLOSE_GOING_AWAY))

        await client.server.close()  # the node stops while the tab is open

        await asyncio.wait_for(closed, 5)
    finally:
        await client.close()
    assert await presence.nodes_for_users(["alice"]) == {}
    assert await push_stream_keys(redis_client) == []


async def test_presence_refresher_rebuilds_presence_lost_in_redis(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    settings = settings.replace(presence={"refresh_interval_s": 0.1, "ttl_s": 30})
    session = await sessions.create("alice", ttl_s=3600)
    presence = Presence(redis_client, settings.presence.ttl_s)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    await redis_client.delete("notify:presence:user:alice")  # as after a Redis restart

    async def rebuilt() -> bool:
        return await presence.nodes_for_users(["alice"]) == {"n1": ["alice"]}

    await wait_until_async(rebuilt, timeout_s=2.0, what="presence to be rewritten")
    await ws.close()


async def test_lookup_removes_fields_of_nodes_whose_presence_lapsed(redis_client) -> None:
    from notify_server.transport.presence import Presence

    presence = Presence(redis_client, ttl_s=30)
    await presence.add("alive-node", ["carol"])
    await redis_client.hset("notify:presence:user:carol", "dead-node", 1)  # lapsed long ago

    assert await presence.nodes_for_users(["carol"]) == {"alive-node": ["carol"]}
    assert await redis_client.hkeys("notify:presence:user:carol") == [b"alive-node"]
