"""Open sockets follow their session (SPEC §7 "Auth"): closed with 4001 at expiry, on revocation (within
5 s, on every node) and on the periodic re-check; an extended session keeps its socket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from notify_server.auth.revocations import publish_revocation
from notify_server.core.constants import CLOSE_UNAUTHORIZED
from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore, hash_token
from notify_server.web import appkeys
from tests.fakes import (
    assert_nothing_arrives,
    connect_and_count,
    expect_close,
    revocation_subscribers,
    start_node,
    wait_until,
    wait_until_async,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
REVOCATION_DEADLINE_S = 5.0


async def execute(db_pool: Any, sql: str, params: tuple[Any, ...]) -> None:
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, params)


async def expire_in(db_pool: Any, token: str, seconds: float) -> None:
    await execute(
        db_pool,
        "UPDATE sessions SET expires_at = now() + make_interval(secs => %s) WHERE token_hash = %s",
        (seconds, hash_token(token)),
    )


# ---------------------------------------------------------------- expiry


async def test_websocket_closes_with_4001_when_the_session_expires(
    aiohttp_client, settings: Settings, sessions: SessionStore, db_pool: Any
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    await expire_in(db_pool, session.token, 0.5)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)
    started = time.monotonic()

    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=2.0)

    assert time.monotonic() - started < 2.0
    await wait_until(lambda: client.app[appkeys.MANAGER].connections == {}, what="the socket to be removed")


async def test_websocket_keeps_its_socket_when_the_session_is_extended_before_expiry(
    aiohttp_client, settings: Settings, sessions: SessionStore, db_pool: Any
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    await expire_in(db_pool, session.token, 0.5)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    await expire_in(db_pool, session.token, 3600)

    await assert_nothing_arrives(ws, timeout_s=1.0)  # past the old expiry
    manager = client.app[appkeys.MANAGER]
    assert manager.count("u1") == 1
    # Re-checked at the old expiry, and watched again until the new one.
    (ws_on_node,) = manager.connections["u1"]
    state = manager.state_of(ws_on_node)
    assert state is not None
    assert state.expires_at - asyncio.get_running_loop().time() > 3000
    await ws.close()


# ---------------------------------------------------------------- revocation


async def test_revocation_closes_the_sessions_sockets_with_4001_within_5s(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    revoked = await sessions.create("u1", ttl_s=3600)
    other_session_same_user = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    tabs = [(await connect_and_count(client, revoked.token))[0] for _ in range(2)]
    survivor, _ = await connect_and_count(client, other_session_same_user.token)
    started = time.monotonic()

    token_hash = await sessions.revoke(revoked.token)
    assert token_hash is not None
    await publish_revocation(redis_client, token_hash)

    for ws in tabs:
        await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=REVOCATION_DEADLINE_S)
    assert time.monotonic() - started < REVOCATION_DEADLINE_S
    # Only that session's sockets: the user's other session stays connected.
    await assert_nothing_arrives(survivor, timeout_s=0.3)
    assert client.app[appkeys.MANAGER].count("u1") == 1
    await survivor.close()


async def test_revocation_reaches_sockets_on_every_node(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    node1 = await start_node(aiohttp_client, settings, "n1")
    node2 = await start_node(aiohttp_client, settings, "n2")
    on_node1, _ = await connect_and_count(node1, session.token)
    on_node2, _ = await connect_and_count(node2, session.token)

    token_hash = await sessions.revoke(session.token)
    assert token_hash is not None
    await publish_revocation(redis_client, token_hash)

    await expect_close(on_node1, CLOSE_UNAUTHORIZED, timeout_s=REVOCATION_DEADLINE_S)
    await expect_close(on_node2, CLOSE_UNAUTHORIZED, timeout_s=REVOCATION_DEADLINE_S)


async def test_cli_session_revoke_closes_open_sockets_with_4001_within_5s(
    aiohttp_client, settings: Settings, sessions: SessionStore, cli_env: dict[str, str], python: str
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    # Not subprocess.run: the node runs in this event loop and must keep serving meanwhile.
    process = await asyncio.create_subprocess_exec(
        python, "-m", "notify_server", "session", "revoke", session.token,
        env=cli_env, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    revoked_at = time.monotonic()

    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=REVOCATION_DEADLINE_S)
    assert time.monotonic() - revoked_at < REVOCATION_DEADLINE_S
    assert session.token.encode() not in stdout + stderr


async def test_periodic_recheck_closes_a_socket_revoked_directly_in_the_table(
    aiohttp_client, settings: Settings, sessions: SessionStore, db_pool: Any
) -> None:
    settings = settings.replace(session={"recheck_interval_s": 0.2})
    revoked = await sessions.create("u1", ttl_s=3600)
    untouched = await sessions.create("u2", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, revoked.token)
    other, _ = await connect_and_count(client, untouched.token)

    # The web app's own logout: a row update, no pub/sub message.
    await execute(db_pool, "UPDATE sessions SET revoked_at = now() WHERE token_hash = %s", (hash_token(revoked.token),))

    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=2.0)
    await assert_nothing_arrives(other, timeout_s=0.5)  # several re-checks later
    assert client.app[appkeys.MANAGER].user_ids() == ["u2"]
    await other.close()


async def test_periodic_recheck_closes_a_socket_whose_session_row_was_deleted(
    aiohttp_client, settings: Settings, sessions: SessionStore, db_pool: Any
) -> None:
    settings = settings.replace(session={"recheck_interval_s": 0.2})
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    await execute(db_pool, "DELETE FROM sessions WHERE token_hash = %s", (hash_token(session.token),))

    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=2.0)


async def test_revocation_listener_resubscribes_after_its_connection_drops(
    aiohttp_client, settings: Settings, sessions: SessionStore, redis_client: Redis
) -> None:
    session = await sessions.create("u1", ttl_s=3600)
    client = await start_node(aiohttp_client, settings)
    ws, _ = await connect_and_count(client, session.token)

    # A Redis blip, as the node sees it: its pub/sub connection is cut.
    for client_id in await revocation_subscribers(redis_client):
        await redis_client.client_kill_filter(_id=client_id)

    async def subscribed() -> bool:
        return bool(await revocation_subscribers(redis_client))

    await wait_until_async(subscribed, timeout_s=1.5, what="the node to subscribe again")  # retries after 0.1 s
    token_hash = await sessions.revoke(session.token)
    assert token_hash is not None
    await publish_revocation(redis_client, token_hash)
    await expect_close(ws, CLOSE_UNAUTHORIZED, timeout_s=REVOCATION_DEADLINE_S)
