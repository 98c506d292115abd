"""The session store (SPEC §6 `sessions`): hash-only storage, validity = exists, not revoked, not expired."""

from __future__ import annotations

import hashlib
from typing import Any

from notify_server.storage.sessions import MAX_TOKEN_CHARS, SessionStore, hash_token


async def execute(pool: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []


async def test_create_returns_a_token_for_the_user(sessions: SessionStore) -> None:
    new = await sessions.create("u1", ttl_s=60)

    assert isinstance(new.token, str) and len(new.token) >= 32
    assert new.user_id == "u1"


async def test_tokens_are_unique(sessions: SessionStore) -> None:
    tokens = {(await sessions.create("u1", ttl_s=60)).token for _ in range(5)}

    assert len(tokens) == 5


async def test_database_stores_only_the_sha256_hex_of_the_token(sessions: SessionStore, db_pool: Any) -> None:
    new = await sessions.create("u1", ttl_s=60)

    rows = await execute(db_pool, "SELECT token_hash, row_to_json(s)::text FROM sessions s")

    assert len(rows) == 1
    token_hash, whole_row = rows[0]
    assert token_hash == hashlib.sha256(new.token.encode()).hexdigest()
    assert token_hash == hash_token(new.token)
    assert new.token not in whole_row


async def test_ttl_sets_expires_at(sessions: SessionStore, db_pool: Any) -> None:
    new = await sessions.create("u1", ttl_s=3600)

    [(seconds,)] = await execute(
        db_pool, "SELECT extract(epoch FROM expires_at - created_at) FROM sessions WHERE token_hash = %s",
        (hash_token(new.token),),
    )
    assert 3599 <= float(seconds) <= 3601


async def test_valid_token_validates_to_its_user(sessions: SessionStore) -> None:
    new = await sessions.create("u1", ttl_s=60)

    session = await sessions.validate(new.token)

    assert session is not None
    assert session.user_id == "u1"
    assert session.token_hash == hash_token(new.token)
    assert session.expires_at == new.expires_at


async def test_expired_session_does_not_validate(sessions: SessionStore, db_pool: Any) -> None:
    new = await sessions.create("u1", ttl_s=60)
    await execute(
        db_pool, "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
        (hash_token(new.token),),
    )

    assert await sessions.validate(new.token) is None


async def test_extended_session_validates_again(sessions: SessionStore, db_pool: Any) -> None:
    new = await sessions.create("u1", ttl_s=60)
    token_hash = hash_token(new.token)
    await execute(db_pool, "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash = %s",
                  (token_hash,))
    await execute(db_pool, "UPDATE sessions SET expires_at = now() + interval '1 hour' WHERE token_hash = %s",
                  (token_hash,))

    assert await sessions.validate(new.token) is not None


async def test_revoked_session_does_not_validate(sessions: SessionStore) -> None:
    new = await sessions.create("u1", ttl_s=60)

    assert await sessions.revoke(new.token) == hash_token(new.token)
    assert await sessions.validate(new.token) is None


async def test_revoking_one_session_leaves_the_users_others_valid(sessions: SessionStore) -> None:
    first = await sessions.create("u1", ttl_s=60)
    second = await sessions.create("u1", ttl_s=60)

    await sessions.revoke(first.token)

    assert await sessions.validate(second.token) is not None


async def test_unknown_token_does_not_validate(sessions: SessionStore) -> None:
    await sessions.create("u1", ttl_s=60)

    assert await sessions.validate("not-a-token") is None


async def test_missing_token_does_not_validate(sessions: SessionStore) -> None:
    assert await sessions.validate(None) is None
    assert await sessions.validate("") is None


async def test_over_long_token_is_refused_even_when_its_hash_is_stored(sessions: SessionStore, db_pool: Any) -> None:
    long_token = "x" * (MAX_TOKEN_CHARS + 1)
    await execute(
        db_pool, "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES (%s, 'u1', now() + interval '1 hour')",
        (hash_token(long_token),),
    )

    assert await sessions.validate(long_token) is None


async def test_validate_by_hash_matches_validate_by_token(sessions: SessionStore) -> None:
    new = await sessions.create("u1", ttl_s=60)

    session = await sessions.validate_hash(hash_token(new.token))

    assert session is not None and session.user_id == "u1"


async def test_live_hashes_returns_only_live_sessions(sessions: SessionStore) -> None:
    live = await sessions.create("u1", ttl_s=60)
    revoked = await sessions.create("u2", ttl_s=60)
    await sessions.revoke(revoked.token)

    found = await sessions.live_hashes([hash_token(live.token), hash_token(revoked.token), hash_token("unknown")])

    assert found == {hash_token(live.token): live.expires_at}
    assert await sessions.live_hashes([]) == {}


async def test_revoke_unknown_token_returns_none(sessions: SessionStore) -> None:
    assert await sessions.revoke("no-such-token") is None


async def test_revoke_twice_returns_none_the_second_time(sessions: SessionStore, db_pool: Any) -> None:
    new = await sessions.create("u1", ttl_s=60)
    await sessions.revoke(new.token)
    [(first_revoked_at,)] = await execute(db_pool, "SELECT revoked_at FROM sessions")

    assert await sessions.revoke(new.token) is None
    assert await execute(db_pool, "SELECT revoked_at FROM sessions") == [(first_revoked_at,)]
