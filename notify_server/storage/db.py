"""The Postgres connection pool (aiopg), opened on first use and rebuilt after a fault that breaks it.

Connections are autocommit: open transactions explicitly (`async with cur.begin()`).

Nothing connects when a process starts, so `serve` and `worker` come up while Postgres is away and
answer 503 / retry until it is back. After a Postgres restart under uvloop, aiopg's pool can be left
holding handles the loop refuses (`RuntimeError: … <UVPoll closed=True>`, stores.py): the pool is then
dropped and the next use opens a fresh one.

A multi-host `database.url` (libpq's `postgresql://h1:5432,h2:5432/notify?target_session_attrs=read-write`)
is resolved here: aiopg watches the socket libpq opened first, and libpq opens a new one for each host it
tries, so aiopg's own connect hangs whenever the first host is not the one kept. So the pool is given
the host libpq picks now (a blocking connect in a thread, libpq's own rules), and when opening a
connection fails — that host died, or came back as a standby — the pool is dropped and the next use
asks libpq again: after a promotion the pool follows the new primary within a connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiopg
import psycopg2
import psycopg2.extensions

from notify_server.core.settings import DatabaseSettings
from notify_server.core.stores import Fault, classify

logger = logging.getLogger("notify.db")

CONNECT_TIMEOUT_S = 10.0


def is_multi_host(url: str) -> bool:
    """Whether a libpq URL lists several hosts (or ports)."""
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        return False
    return "," in params.get("host", "") or "," in params.get("port", "")


def writable_host_dsn(url: str) -> str:
    """A multi-host URL as the DSN of the one host libpq connects to now (its target_session_attrs rules);
    any other URL as it is. Blocking (libpq's own connect): run it in a thread."""
    if not is_multi_host(url):
        return url
    params = psycopg2.extensions.parse_dsn(url)
    params.setdefault("connect_timeout", str(int(CONNECT_TIMEOUT_S)))  # per host tried
    conn = psycopg2.connect(psycopg2.extensions.make_dsn(**params))
    try:
        host, port = conn.info.host, conn.info.port
    finally:
        conn.close()
    params.update(host=host, port=str(port))
    dsn: str = psycopg2.extensions.make_dsn(**params)
    return dsn


class Database:
    """`async with db.connection() as conn:` — a pooled connection."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._pool: aiopg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._multi_host = is_multi_host(settings.url)

    async def _current_pool(self) -> aiopg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise RuntimeError("the database pool is closed")
            if self._pool is None:
                dsn = await asyncio.to_thread(writable_host_dsn, self._settings.url)
                self._pool = await aiopg.create_pool(
                    dsn=dsn,
                    minsize=self._settings.pool_min_size,
                    maxsize=self._settings.pool_max_size,
                    timeout=CONNECT_TIMEOUT_S,
                )
            return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        pool = await self._current_pool()
        try:
            conn = await pool.acquire()
        except Exception as exc:
            if self._multi_host and classify(exc) is Fault.TRANSIENT:
                # The host it was given may be gone or a standby now: ask libpq again.
                self._discard(pool, "cannot open a connection to its host; looking for the writable one again")
            elif isinstance(exc, RuntimeError) and classify(exc) is Fault.TRANSIENT:
                self._discard(pool)
            raise
        try:
            yield conn
        except Exception as exc:
            if isinstance(exc, RuntimeError) and classify(exc) is Fault.TRANSIENT:
                self._discard(pool)
            raise
        finally:
            await pool.release(conn)

    def _discard(self, pool: aiopg.Pool, why: str = "broken after a connection fault; opening a new one") -> None:
        """Forget a broken pool (its connections are closed, not awaited: they may be half dead)."""
        if self._pool is pool:
            logger.warning("Postgres pool %s", why)
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
