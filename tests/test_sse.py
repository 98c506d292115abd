"""`/sse/notifications` (issue 13): the WebSocket's frames as Server-Sent Events, for networks that block
WebSockets — a real node (pytest-aiohttp), the real worker, Postgres and Redis of the test run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notify_server.core.settings import Settings
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.sessions import SessionStore
from notify_server.transport.presence import Presence
from notify_server.web import appkeys
from notify_server.web.sse import SSE_PATH, encode_event
from tests.fakes import claim_rejected, connect_and_count, start_node, wait_until
from tests.helpers import run_worker_burst


class EventStream:
    """The client side: an open SSE response, parsed into (event, id, data) as a browser would."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.comments = 0

    async def next(self, timeout_s: float = 5.0) -> tuple[str, str | None, Any]:
        event, event_id, data = "message", None, None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data is not None:
                        return event, event_id, data
                    continue
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("id: "):
                    event_id = line[len("id: "):]
                elif line.startswith("data: "):
                    data = orjson.loads(line[len("data: "):])

    async def until(self, kind: str, timeout_s: float = 5.0) -> tuple[str | None, Any]:
        while True:
            event, event_id, data = await self.next(timeout_s)
            if event == kind:
                return event_id, data


async def open_stream(client: TestClient, token: str | None = None, **headers: str) -> EventStream:
    params = {"token": token} if token else {}
    response = await client.get(SSE_PATH, params=params, headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return EventStream(response)


async def emit(redis_client: Redis, settings: Settings, event: dict[str, Any]) -> None:
    assert await enqueue_event(redis_client, event, queue_name=settings.queues.events) is not None
    await run_worker_burst(settings)


@pytest.fixture
async def alice(sessions: SessionStore) -> str:
    return (await sessions.create("alice", ttl_s=3600)).token


async def test_the_stream_starts_with_the_count_then_carries_notifications_with_their_id(
    aiohttp_client: Any, settings: Settings, redis_client: Redis, alice: str
) -> None:
    client = await start_node(aiohttp_client, settings)
    stream = await open_stream(client, alice)
    assert (await stream.next()) == ("unread_count", None, {"count": 0, "unseen": 0, "version": 0})

    await emit(redis_client, settings, claim_rejected("evt-1", "alice"))

    event, event_id, data = await stream.next()
    assert event == "notification"
    assert event_id == data["notification_id"]
    assert set(data) == {"notification_id", "title", "body", "priority", "action_url", "event_type",
                         "metadata", "created_at"}
    assert data["body"] == "Your claim for Dr. Smith has been rejected."
    assert (await stream.until("unread_count"))[1]["count"] == 1
    assert await Presence(redis_client, ttl_s=30).nodes_for_users(["alice"]) == {"n1": ["alice"]}
    stream.response.close()


async def test_last_event_id_replays_what_was_missed_in_order_without_a_gap(
    aiohttp_client: Any, settings: Settings, redis_client: Redis, alice: str
) -> None:
    client = await start_node(aiohttp_client, settings)
    first = await open_stream(client, alice)
    await first.next()
    await emit(redis_client, settings, claim_rejected("seen", "alice"))
    seen_id, _ = await first.until("notification")
    first.response.close()
    await wait_until(lambda: client.app[appkeys.MANAGER].count("alice") == 0, what="the stream to go")
    for n in range(3):
        await emit(redis_client, settings, claim_rejected(f"missed-{n}", "alice"))

    again = await open_stream(client, alice, **{"Last-Event-ID": seen_id or ""})

    assert (await again.next())[0] == "unread_count"
    replayed = [(await again.next())[2]["action_url"] for _ in range(3)]
    assert replayed == ["/claims/abc123"] * 3
    await emit(redis_client, settings, claim_rejected("live", "alice", action_url="/live"))
    assert (await again.until("notification"))[1]["action_url"] == "/live"
    again.response.close()


async def test_an_unknown_last_event_id_gets_resync(aiohttp_client: Any, settings: Settings, alice: str) -> None:
    client = await start_node(aiohttp_client, settings)
    stream = await open_stream(client, alice, **{"Last-Event-ID": "0f1b0f1b-0000-4000-8000-000000000000"})
    assert [(await stream.next())[0] for _ in range(2)] == ["unread_count", "resync"]
    stream.response.close()


async def test_no_or_a_bad_credential_is_401_and_a_foreign_origin_403(
    aiohttp_client: Any, settings: Settings, alice: str
) -> None:
    client = await start_node(aiohttp_client, settings)
    for params in ({}, {"token": "not-a-session"}):
        response = await client.get(SSE_PATH, params=params)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    foreign = await client.get(SSE_PATH, params={"token": alice}, headers={"Origin": "https://evil.example"})
    assert foreign.status == 403


async def test_a_comment_line_keeps_the_stream_alive_every_heartbeat_interval(
    aiohttp_client: Any, settings: Settings, alice: str
) -> None:
    client = await start_node(aiohttp_client, settings.replace(heartbeat={"interval_s": 0.2, "timeout_s": 0.1}))
    stream = await open_stream(client, alice)
    await stream.next()
    reader = asyncio.ensure_future(stream.next(timeout_s=1.5))
    await asyncio.sleep(1.0)
    reader.cancel()
    assert stream.comments >= 3
    assert client.app[appkeys.MANAGER].count("alice") == 1  # no pong needed: still there
    stream.response.close()


async def test_expiry_ends_the_stream_with_a_close_event_4001(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore
) -> None:
    session = await sessions.create("alice", ttl_s=1)
    client = await start_node(aiohttp_client, settings)
    stream = await open_stream(client, session.token)
    await stream.next()
    started = time.monotonic()

    assert (await stream.until("close", timeout_s=5))[1] == {"code": 4001}
    assert time.monotonic() - started < 3
    with pytest.raises(EOFError):
        await stream.next()


async def test_streams_count_against_the_per_user_cap_with_sockets(
    aiohttp_client: Any, settings: Settings, alice: str
) -> None:
    client = await start_node(aiohttp_client, settings.replace(limits={"max_connections_per_user": 2}))
    ws, _ = await connect_and_count(client, alice)
    stream = await open_stream(client, alice)
    await stream.next()

    over = await client.get(SSE_PATH, params={"token": alice})
    assert over.status == 429
    stream.response.close()
    await ws.close()


async def test_draining_says_1001(aiohttp_client: Any, settings: Settings, alice: str) -> None:
    client = await start_node(aiohttp_client, settings)
    stream = await open_stream(client, alice)
    await stream.next()

    await client.app.shutdown()

    assert (await stream.until("close"))[1] == {"code": 1001}


def test_frames_become_events_and_notifications_carry_their_id() -> None:
    assert encode_event('{"type":"unread_count","data":{"count":2}}') == b'event: unread_count\ndata: {"count":2}\n\n'
    assert encode_event('{"type":"resync","data":{}}') == b"event: resync\ndata: {}\n\n"
    assert encode_event("") == b":\n\n"
    frame = '{"type":"notification","data":{"notification_id":"n-1","title":"t"}}'
    assert encode_event(frame) == b'event: notification\nid: n-1\ndata: {"notification_id":"n-1","title":"t"}\n\n'
