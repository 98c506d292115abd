"""Reachability checks of Postgres and Redis, for `notify-server check` (one line per problem)."""

from __future__ import annotations

import aiopg
import psycopg2
import redis.exceptions
from redis.asyncio import Redis

CHECK_TIMEOUT_S = 5.0


async def check_postgres(url: str) -> str | None:
    try:
        async with aiopg.connect(url, timeout=CHECK_TIMEOUT_S) as conn, conn.cursor() as cur:
            await cur.execute("SELECT to_regclass('notifications') IS NOT NULL")
            (migrated,) = await cur.fetchone()
    except (TimeoutError, psycopg2.Error, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot reach Postgres: {detail}"
    if not migrated:
        return "Postgres is reachable but not migrated: run `notify-server migrate`"
    return None


async def check_redis(url: str) -> str | None:
    client = Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"cannot reach Redis: {exc}"
    finally:
        await client.aclose()
    return None
