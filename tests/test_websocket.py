"""`/ws/notifications` on a real node (SPEC §7): auth, first frame, Origin, per-user limit, client frames."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from notify_server.core.constants import CLOSE_TOO_MANY_CONNECTIONS, CLOSE_UNAUTHORIZED
from notify_server.core.settings import Settings
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient
from notify_server.storage.sessions import SessionStore, hash_token
from notify_server.web import appkeys
from tests.fakes import (
    assert_nothing_arrives,
    connect_and_count,
    expect_close,
    open_tab,
    receive_unread_count,
    start_node,
    wait_until,
)
from tests.helpers import insert


async def execute(db_pool: Any, sql: str, params: tuple[Any, ...]) -> None:
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, params)


async def store_for(repository: NotificationRepository, user_id: str, *event_ids: str) -> None:
    for event_id in event_ids:
        await insert(repository,
            NewNotifications(
                event_id=event_id, event_type="CLAIM_REJECTED", title="Claim Rejected", body="b",
                priority="HIGH", action_url=None, metadata={}, recipients=[Recipient(user_id)],
            )
        )


# ---------------------------------------------------------------- auth


async def test_websocket_rejects_a_connection_without_a_token_with_4001(aiohttp_client, settings: Settings) -> None:
    client = await start_node(aiohttp_client, settings)

    ws = await open_tab(client, None)

    await expect_close(ws, CLOSE_UNAUTHORIZED)
    assert client.app[appkeys.MANAGER].connections == {}


@pytest.mark.parametrize("via", ["cookie", "query"])
async def test_websocket_rejects_an_unknown_token_with_4001(aiohttp_client, settings: Settings, via: str) -> None:
    client = await start_node(aiohttp_client, settings)

    ws = await open_tab(client, "not-a-session-token", via=via)

    await expect_close(ws, CLOSE_UNAUTHORIZED)
    assert client.app[appkeys.MANAGER].connections == {}


async def test_websocket_rejects_an_expired_session_with_4001(
    aiohttp_client, settings: Settings, sessions: SessionStore, db_pool: Any
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    await execute(
        db_pool, "UPDATE sessions SET expires_at = now() - interval '1 s' WHERE token_hash = %s",
        (hash_token(session.token),),
    )
    client = await start_node(aiohttp_client, settings)

    ws = await open_tab(client, session.token)

    await expect_close(ws, CLOSE_UNAUTHORIZED)


async def test_websocket_rejects_a_revoked_session_with_4001(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    assert await sessions.revoke(session.token) is not None
    client = await start_node(aiohttp_client, settings)

    ws = await open_tab(client, session.token)

    await expect_close(ws, CLOSE_UNAUTHORIZED)


async def test_websocket_refused_upgrades_are_counted_as_auth_failures(aiohttp_client, settings: Settings) -> None:
    client = await start_node(aiohttp_client, settings)

    await expect_close(await open_tab(client, "bad"), CLOSE_UNAUTHORIZED)

    metrics = await (await client.get("/metrics")).text()
    assert 'notify_auth_failures_total{surface="websocket"} 1.0' in metrics


@pytest.mark.parametrize("via", ["cookie", "query"])
async def test_websocket_accepts_a_valid_token_from_cookie_or_query(
    aiohttp_client, settings: Settings, sessions: SessionStore, via: str
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)

    ws, count = await connect_and_count(client, session.token, via=via)

    assert count == 0
    assert client.app[appkeys.MANAGER].count("u1") == 1
    await ws.close()
    await wait_until(lambda: client.app[appkeys.MANAGER].connections == {}, what="the socket to be removed")


# ---------------------------------------------------------------- first frame


async def test_websocket_sends_the_unread_count_first_on_connect(
    aiohttp_client, settings: Settings, sessions: SessionStore, repository: NotificationRepository
) -> None:
    await store_for(repository, "u1", "evt-1", "evt-2", "evt-3")
    await store_for(repository, "u2", "evt-4")
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)

    ws = await open_tab(client, session.token)

    assert await receive_unread_count(ws) == 3
    await assert_nothing_arrives(ws, 0.3)


# ---------------------------------------------------------------- Origin (cross-site WebSocket hijacking)


async def test_websocket_refuses_a_foreign_origin_with_403(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_tab(client, session.token, headers={"Origin": "http://evil.example"})

    assert refused.value.status == 403
    assert client.app[appkeys.MANAGER].connections == {}


@pytest.mark.parametrize("origin", ["http://localhost:8080", "http://127.0.0.1:8080", None])
async def test_websocket_accepts_an_allowed_or_absent_origin(
    aiohttp_client, settings: Settings, sessions: SessionStore, origin: str | None
) -> None:
    assert settings.websocket.allowed_origins == ("http://localhost:8080", "http://127.0.0.1:8080")
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)

    headers = {"Origin": origin} if origin else {}
    ws, count = await connect_and_count(client, session.token, headers=headers)

    assert count == 0
    await ws.close()


# ---------------------------------------------------------------- per-user limit


async def test_websocket_closes_the_connection_over_the_per_user_limit_with_4029(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    settings = settings.replace(limits={"max_connections_per_user": 2})
    session = await sessions.create("u1", ttl_s=3600)
    other = await sessions.create("u2", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    first, _ = await connect_and_count(client, session.token)
    second, _ = await connect_and_count(client, session.token)

    third = await open_tab(client, session.token)

    await expect_close(third, CLOSE_TOO_MANY_CONNECTIONS)
    assert client.app[appkeys.MANAGER].count("u1") == 2
    assert not first.closed and not second.closed
    # The limit is per user: another user still gets in.
    other_ws, _ = await connect_and_count(client, other.token)
    # A slot freed by a closed tab can be used again.
    await first.close()
    await wait_until(lambda: client.app[appkeys.MANAGER].count("u1") == 1)
    again, _ = await connect_and_count(client, session.token)
    assert client.app[appkeys.MANAGER].count("u1") == 2
    for ws in (second, other_ws, again):
        await ws.close()


# ---------------------------------------------------------------- client -> server frames


async def test_websocket_ignores_client_text_frames(aiohttp_client, settings: Settings, sessions: SessionStore) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    await ws.send_str('{"type": "hello"}')
    await ws.send_str("not json at all")
    await ws.send_bytes(b"\x00\x01")

    await assert_nothing_arrives(ws, 0.3)
    assert client.app[appkeys.MANAGER].count("u1") == 1
    await ws.close()


async def test_websocket_closes_on_an_oversized_client_frame(
    aiohttp_client, settings: Settings, sessions: SessionStore
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    await ws.send_str("x" * (settings.websocket.max_frame_bytes + 1))

    await expect_close(ws, 1009)
    await wait_until(lambda: client.app[appkeys.MANAGER].connections == {}, what="the socket to be removed")


async def test_websocket_answers_client_pings(aiohttp_client, settings: Settings, sessions: SessionStore) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token, autoping=False)

    await ws.ping(b"are-you-there")

    message = await ws.receive(timeout=2)
    assert message.type is WSMsgType.PONG and message.data == b"are-you-there"
    await ws.close()

