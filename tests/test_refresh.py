"""The in-band `refresh` frame (issue 12): a socket moves onto a new credential of the same user, or closes.

Real node, real tokens (tests/tokens.py) and real sessions.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notify_server.auth.revocations import publish_revocation
from notify_server.core.constants import CLOSE_TOO_MANY_ATTEMPTS, CLOSE_UNAUTHORIZED
from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore
from notify_server.web import appkeys
from tests.fakes import (
    assert_nothing_arrives,
    connect_and_count,
    expect_close,
    receive_frame,
    start_node,
    wait_until,
)
from tests.tokens import SigningKey, hs256_key


@pytest.fixture(scope="module")
def hs() -> SigningKey:
    return hs256_key()


@pytest.fixture
async def node(aiohttp_client, settings: Settings, hs: SigningKey, tmp_path: Path) -> TestClient:
    return await start_node(aiohttp_client, hs.settings(settings, tmp_path))


def refresh(token: object) -> str:
    return orjson.dumps({"type": "refresh", "token": token}).decode()


def expiry_of(token: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(jwt.decode(token, options={"verify_signature": False})["exp"], dt.UTC)


@pytest.mark.slow  # waits past a real exp (whole seconds): up to 2 s
async def test_a_refresh_moves_the_expiry_and_the_socket_outlives_the_old_token(
    node: TestClient, hs: SigningKey
) -> None:
    old = hs.mint("alice", expires_in_s=2)
    new = hs.mint("alice", expires_in_s=3600)
    ws, _ = await connect_and_count(node, old, via="query")

    await ws.send_str(refresh(new))
    answer = await receive_frame(ws)

    assert answer["type"] == "refreshed"
    assert dt.datetime.fromisoformat(answer["data"]["expires_at"]) == expiry_of(new)
    wait_s = (expiry_of(old) - dt.datetime.now(dt.UTC)).total_seconds() + 0.3
    await assert_nothing_arrives(ws, timeout_s=wait_s)  # past the old token's exp: still open
    manager = node.app[appkeys.MANAGER]
    assert manager.count("alice") == 1
    await manager.push_to_user("alice", {"type": "probe", "data": {}})
    assert (await receive_frame(ws))["type"] == "probe"
    metrics = await (await node.get("/metrics")).text()
    assert 'notify_auth_refreshes_total{result="ok"} 1.0' in metrics
    await ws.close()


async def test_a_refresh_to_another_user_closes_with_4001(node: TestClient, hs: SigningKey) -> None:
    ws, _ = await connect_and_count(node, hs.mint("alice"), via="query")

    await ws.send_str(refresh(hs.mint("mallory")))

    await expect_close(ws, CLOSE_UNAUTHORIZED)
    await wait_until(lambda: node.app[appkeys.MANAGER].connections == {}, what="the socket to be removed")


@pytest.mark.parametrize(
    "frame",
    [
        refresh("not-a-credential"),
        refresh(None),
        refresh(""),
        '{"type": "refresh"}',
    ],
    ids=["unknown-token", "null-token", "empty-token", "no-token"],
)
async def test_a_refresh_that_does_not_validate_closes_with_4001(node: TestClient, hs: SigningKey, frame: str) -> None:
    ws, _ = await connect_and_count(node, hs.mint("alice"), via="query")

    await ws.send_str(frame)

    await expect_close(ws, CLOSE_UNAUTHORIZED)


async def test_a_refresh_with_an_expired_token_closes_with_4001(node: TestClient, hs: SigningKey) -> None:
    ws, _ = await connect_and_count(node, hs.mint("alice"), via="query")

    await ws.send_str(refresh(hs.mint("alice", expires_in_s=-10)))

    await expect_close(ws, CLOSE_UNAUTHORIZED)


async def test_other_client_frames_are_still_ignored(node: TestClient, hs: SigningKey) -> None:
    ws, _ = await connect_and_count(node, hs.mint("alice"), via="query")

    for text in ("hello", "{}", '{"type": "ping"}', "[1, 2]", '{"type": "refreshX", "token": "x"}', '"refresh"'):
        await ws.send_str(text)

    await assert_nothing_arrives(ws, timeout_s=0.3)
    assert node.app[appkeys.MANAGER].count("alice") == 1
    await ws.close()


async def test_a_session_socket_refreshed_onto_a_new_session_follows_the_new_one(
    node: TestClient, sessions: SessionStore, redis_client: Redis
) -> None:
    first = await sessions.create("alice", ttl_s=3600)
    second = await sessions.create("alice", ttl_s=7200)
    ws, _ = await connect_and_count(node, first.token)

    await ws.send_str(refresh(second.token))
    answer = await receive_frame(ws)

    assert answer["type"] == "refreshed"
    assert abs(dt.datetime.fromisoformat(answer["data"]["expires_at"]) - second.expires_at) < dt.timedelta(seconds=1)
    # Revoking the session it left changes nothing; revoking the one it is on closes it.
    old_hash = await sessions.revoke(first.token)
    assert old_hash is not None
    await publish_revocation(redis_client, old_hash)
    await assert_nothing_arrives(ws, timeout_s=0.5)
    new_hash = await sessions.revoke(second.token)
    assert new_hash is not None
    started = time.monotonic()
    await publish_revocation(redis_client, new_hash)
    await expect_close(ws, CLOSE_UNAUTHORIZED)
    assert time.monotonic() - started < 5.0


async def test_a_socket_may_refresh_from_a_session_onto_a_jwt(
    node: TestClient, hs: SigningKey, sessions: SessionStore
) -> None:
    session = await sessions.create("alice", ttl_s=3600)
    ws, _ = await connect_and_count(node, session.token)

    await ws.send_str(refresh(hs.mint("alice")))

    assert (await receive_frame(ws))["type"] == "refreshed"
    state = node.app[appkeys.MANAGER].state_of(next(iter(node.app[appkeys.MANAGER].connections["alice"])))
    assert state is not None and state.identity is not None and state.identity.method == "jwt"
    assert state.session_hash == ""
    await ws.close()


async def test_refreshes_are_answered_in_order(node: TestClient, hs: SigningKey) -> None:
    ws, _ = await connect_and_count(node, hs.mint("alice"), via="query")
    tokens = [hs.mint("alice", expires_in_s=3600 + i) for i in range(3)]

    for token in tokens:
        await ws.send_str(refresh(token))
    answers = [await receive_frame(ws) for _ in tokens]

    assert [dt.datetime.fromisoformat(a["data"]["expires_at"]) for a in answers] == [expiry_of(t) for t in tokens]
    await ws.close()


async def test_refresh_frames_past_the_per_socket_allowance_close_with_4029(
    aiohttp_client, settings: Settings, hs: SigningKey, tmp_path: Path
) -> None:
    """Each refresh costs a verification (a Postgres query for a session, a call to the app for proxy):
    a socket may send websocket.refresh_burst of them, then one per refresh_interval_s."""
    limited = hs.settings(settings, tmp_path).replace(websocket={"refresh_burst": 3, "refresh_interval_s": 3600})
    node = await start_node(aiohttp_client, limited)
    ws, _ = await connect_and_count(node, hs.mint("alice"), via="query")
    other, _ = await connect_and_count(node, hs.mint("alice"), via="query")

    for _ in range(3):
        await ws.send_str(refresh(hs.mint("alice")))
        assert (await receive_frame(ws))["type"] == "refreshed"
    await ws.send_str(refresh(hs.mint("alice")))
    await expect_close(ws, CLOSE_TOO_MANY_ATTEMPTS)

    await other.send_str(refresh(hs.mint("alice")))  # the allowance is the socket's own
    assert (await receive_frame(other))["type"] == "refreshed"
    metrics = await (await node.get("/metrics")).text()
    assert 'notify_rate_limited_total{limit="refresh"} 1.0' in metrics
    assert 'notify_auth_refreshes_total{result="limited"} 1.0' in metrics
    await other.close()
