"""Heartbeat (SPEC §7): the node pings every `heartbeat.interval_s`; a socket without a pong within
`heartbeat.timeout_s` is stale: closed and removed from the map (and its user's presence with it)."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import WSMsgType
from redis.asyncio import Redis

from notify_server.core.constants import CLOSE_HEARTBEAT_TIMEOUT
from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore
from notify_server.transport.presence import Presence
from notify_server.web import appkeys
from tests.fakes import connect_and_count, expect_dropped, start_node, wait_until, wait_until_async

INTERVAL_S = 0.3
TIMEOUT_S = 0.2


def fast_heartbeat(settings: Settings) -> Settings:
    return settings.replace(heartbeat={"interval_s": INTERVAL_S, "timeout_s": TIMEOUT_S})


async def test_heartbeat_drops_a_client_that_never_answers_pings_and_keeps_one_that_does(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    mute = await sessions.create("mute", ttl_s=3600)
    lively = await sessions.create("lively", ttl_s=3600)
    client = await start_node(aiohttp_client, fast_heartbeat(settings))
    manager = client.app[appkeys.MANAGER]
    silent_ws, _ = await connect_and_count(client, mute.token, autoping=False)  # never answers pings
    answering_ws, _ = await connect_and_count(client, lively.token)  # aiohttp answers pings while reading

    # Several intervals; reading is what makes the answering client's pongs go out. (Not receive's own
    # timeout: aiohttp restarts it after every ping it answers.)
    try:
        message = await asyncio.wait_for(answering_ws.receive(), 4 * INTERVAL_S)
    except TimeoutError:
        pass
    else:
        raise AssertionError(f"the answering client got {message.type!r} {message.data!r}")

    assert "mute" not in manager.connections
    assert manager.user_ids() == ["lively"]
    await expect_dropped(silent_ws, timeout_s=2.0)
    assert not answering_ws.closed
    await answering_ws.close()


async def test_heartbeat_pings_arrive_every_interval(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, fast_heartbeat(settings))
    ws, _ = await connect_and_count(client, session.token, autoping=False)

    for _ in range(2):  # answered by hand, so the socket stays
        message = await ws.receive(timeout=2 * INTERVAL_S + 0.5)
        assert message.type is WSMsgType.PING
        await ws.pong(message.data)

    assert client.app[appkeys.MANAGER].count("u1") == 1
    await ws.close()


async def test_heartbeat_drop_clears_the_users_presence(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("mute", ttl_s=3600)
    presence = Presence(redis_client, settings.presence.ttl_s)
    client = await start_node(aiohttp_client, fast_heartbeat(settings))
    ws, _ = await connect_and_count(client, session.token, autoping=False)
    assert await presence.nodes_for_users(["mute"]) == {"n1": ["mute"]}

    await wait_until(lambda: client.app[appkeys.MANAGER].connections == {}, timeout_s=2.0, what="the stale drop")

    async def absent() -> bool:
        return await presence.nodes_for_users(["mute"]) == {}

    await wait_until_async(absent, timeout_s=1.0, what="the presence to be cleared")
    await expect_dropped(ws, timeout_s=2.0)


async def test_a_dropped_users_pushes_go_nowhere_and_other_users_still_get_theirs(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    mute = await sessions.create("mute", ttl_s=3600)
    lively = await sessions.create("lively", ttl_s=3600)
    client = await start_node(aiohttp_client, fast_heartbeat(settings))
    manager = client.app[appkeys.MANAGER]
    await connect_and_count(client, mute.token, autoping=False)
    answering_ws, _ = await connect_and_count(client, lively.token)
    reader = asyncio.ensure_future(answering_ws.receive(timeout=5))  # keeps answering pings

    await wait_until(lambda: "mute" not in manager.connections, timeout_s=2.0, what="the stale drop")
    assert await manager.push_to_user("mute", {"type": "notification"}) == 0
    assert await manager.push_to_user("lively", {"type": "notification"}) == 1

    message = await reader
    assert message.type is WSMsgType.TEXT and '"notification"' in message.data
    await answering_ws.close()


async def test_a_peer_behind_a_full_send_buffer_is_still_pinged_and_dropped_at_the_pong_deadline(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    """A client that stopped reading: its frames pile up in the kernel and the transport's buffer (fewer
    than limits.send_queue_max, so no 4008). The ping is written behind them all the same, is never
    answered, and the socket leaves the map within interval + timeout."""
    session = await sessions.create("stuck", ttl_s=3600)
    client = await start_node(aiohttp_client, fast_heartbeat(settings.replace(limits={"send_queue_max": 100_000})))
    manager = client.app[appkeys.MANAGER]
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        f"GET /ws/notifications?token={session.token} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )
    await reader.readuntil(b"\r\n\r\n")  # the handshake; from here on this client reads nothing
    await wait_until(lambda: manager.count("stuck") == 1, what="the socket to register")
    (ws,) = manager.connections["stuck"]
    state = manager.state_of(ws)
    assert state is not None and state.transport is not None
    big = "x" * 60_000
    for _ in range(200):  # 12 MB: far more than the kernel buffers take
        await manager.push_to_user("stuck", big)
    await wait_until(lambda: state.transport.get_write_buffer_size() > 65_536, what="the send buffer to fill")

    await wait_until(lambda: manager.count("stuck") == 0, timeout_s=INTERVAL_S + TIMEOUT_S + 3.0,
                     what="the stuck socket to be dropped by the heartbeat")
    assert state.close_code == CLOSE_HEARTBEAT_TIMEOUT
    writer.close()
