"""What "Postgres or Redis is unreachable right now" looks like, for the callers that must survive it."""

from __future__ import annotations

import asyncio

import psycopg2
import redis.exceptions

STORE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    asyncio.TimeoutError,
)
