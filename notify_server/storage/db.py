"""The Postgres connection pool (aiopg), opened on first use and rebuilt after a fault that breaks it.

Connections are autocommit: open transactions explicitly (`async with cur.begin()`).

Nothing connects when a process starts, so `serve` and `worker` come up while Postgres is away and
answer 503 / retry until it is back. After a Postgres restart under uvloop, aiopg's pool can be left
holding handles the loop refuses (`RuntimeError: … <UVPoll closed=True>`, stores.py): the pool is then
dropped and the next use opens a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiopg

from notify_server.core.settings import DatabaseSettings
from notify_server.core.stores import Fault, classify

logger = logging.getLogger("notify.db")

CONNECT_TIMEOUT_S = 10.0


class Database:
    """`async with db.connection() as conn:` — a pooled connection."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._pool: aiopg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def _current_pool(self) -> aiopg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise RuntimeError("the database pool is closed")
            if self._pool is None:
                self._pool = await aiopg.create_pool(
                    dsn=self._settings.url,
                    minsize=self._settings.pool_min_size,
                    maxsize=self._settings.pool_max_size,
                    timeout=CONNECT_TIMEOUT_S,
                )
            return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        pool = await self._current_pool()
        try:
            async with pool.acquire() as conn:
                yield conn
        except Exception as exc:
            if isinstance(exc, RuntimeError) and classify(exc) is Fault.TRANSIENT:
                self._discard(pool)
            raise

    def _discard(self, pool: aiopg.Pool) -> None:
        """Forget a broken pool (its connections are closed, not awaited: they may be half dead)."""
        if self._pool is pool:
            logger.warning("Postgres pool broken after a connection fault; opening a new one")
            self._pool = None
            with contextlib.suppress(Exception):
                pool.terminate()

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.wait_closed(), CONNECT_TIMEOUT_S)
