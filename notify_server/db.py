"""The Postgres connection pool (aiopg). Connections are autocommit: open transactions explicitly."""

from __future__ import annotations

import aiopg

from notify_server.settings import DatabaseSettings


async def create_pool(database: DatabaseSettings) -> aiopg.Pool:
    return await aiopg.create_pool(
        dsn=database.url,
        minsize=database.pool_min_size,
        maxsize=database.pool_max_size,
        timeout=10.0,
    )


async def close_pool(pool: aiopg.Pool) -> None:
    pool.close()
    await pool.wait_closed()
