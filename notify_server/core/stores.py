"""What a Postgres or Redis error means, decided in one place for every caller.

- TRANSIENT: the store is away, restarting, read-only after a fail-over, overloaded, or our connection
  died (including the event loop refusing a dead socket: aiopg's pool refill under uvloop raises
  `RuntimeError: unable to perform operation on <UVPoll closed=True>` after a Postgres restart). Keep
  the work and try again with backoff; readiness says "unavailable".
- MISCONFIGURED: the database is not migrated, or our role lacks a privilege. Retrying is right (someone
  will run `notify-server migrate`), but loudly, and the node is not ready.
- EVENT: Postgres refuses a value of one row (too long, a bad character, a check): that event alone is
  rejected with the reason; the rest of its batch is stored.
- None: not a store fault at all — a bug; the caller decides (supervisors restart, the worker retries
  the one event a bounded number of times).
"""

from __future__ import annotations

import asyncio
import enum

import psycopg2
import psycopg2.errors
import redis.exceptions
from redis.asyncio import Redis


class Fault(enum.Enum):
    TRANSIENT = "transient"
    MISCONFIGURED = "misconfigured"
    EVENT = "event"


# Redis error replies that mean "not now" (fail-over, loading, a busy script, memory, cluster state).
# UNBLOCKED: a blocking read (XREAD, BLPOP) cut short because the server turned replica (a fail-over).
_REDIS_TRANSIENT_PREFIXES = ("READONLY", "LOADING", "BUSY", "OOM", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS",
                             "CLUSTERDOWN", "NOSCRIPT", "UNBLOCKED")
# Postgres SQLSTATE classes: 08 connection, 40 rollback (serialization, deadlock), 53 resources,
# 57 operator intervention (admin shutdown, cannot connect now), 58 system error, 25 transaction state
# (read-only transaction on a standby, idle-in-transaction timeout).
_PG_TRANSIENT_CLASSES = frozenset(("08", "40", "53", "57", "58", "25", "55"))
_PG_EVENT_CLASSES = frozenset(("22", "23", "54"))  # data exception, integrity, program limit (row too big)
_PG_MISCONFIGURED = frozenset((
    "42P01",  # undefined_table
    "42703",  # undefined_column
    "42883",  # undefined_function
    "42704",  # undefined_object
    "3F000",  # invalid_schema_name
    "42501",  # insufficient_privilege
))
_DEAD_LOOP_SOCKET = "unable to perform operation on"  # uvloop/asyncio on a closed transport or poll handle


def classify(exc: BaseException) -> Fault | None:
    """The kind of store fault `exc` is, or None when it is not one."""
    if isinstance(exc, psycopg2.Error):
        return _classify_postgres(exc)
    if isinstance(exc, redis.exceptions.RedisError):
        return _classify_redis(exc)
    if isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError)):
        return Fault.TRANSIENT
    if isinstance(exc, RuntimeError) and _DEAD_LOOP_SOCKET in str(exc):
        return Fault.TRANSIENT
    return None


def _classify_postgres(exc: psycopg2.Error) -> Fault | None:
    code = exc.pgcode or ""
    if code in _PG_MISCONFIGURED:
        return Fault.MISCONFIGURED
    if code[:2] in _PG_EVENT_CLASSES:
        return Fault.EVENT
    if code[:2] in _PG_TRANSIENT_CLASSES:
        return Fault.TRANSIENT
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return Fault.TRANSIENT  # often no SQLSTATE at all: the connection itself failed
    return None  # a syntax error, a type we cannot adapt: our bug, not the store's


def _classify_redis(exc: redis.exceptions.RedisError) -> Fault | None:
    if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
                        redis.exceptions.NoPermissionError)):
        return Fault.MISCONFIGURED
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError)):
        return Fault.TRANSIENT
    if isinstance(exc, redis.exceptions.NoScriptError):  # a restarted or promoted server lost its scripts
        return Fault.TRANSIENT
    message = str(exc).lstrip("-").upper()
    if message.startswith(_REDIS_TRANSIENT_PREFIXES) or "READONLY" in message[:120]:
        return Fault.TRANSIENT
    return None


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the stores cannot serve now (transient or misconfigured): answer 503/1013."""
    return classify(exc) in (Fault.TRANSIENT, Fault.MISCONFIGURED)


def describe(exc: BaseException) -> str:
    """One short line for logs: the error's class and, for Postgres, its SQLSTATE. No values."""
    code = getattr(exc, "pgcode", None)
    return f"{type(exc).__name__}({code})" if code else type(exc).__name__


# What redis-py's Sentinel connections raise instead of READONLY (redis.asyncio.sentinel): they dropped
# themselves, the rest of their pool still points at the demoted primary.
_DEMOTED_PRIMARY = "previous master is now a slave"


def _read_only(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.ReadOnlyError) or (
        isinstance(exc, redis.exceptions.ResponseError) and str(exc).upper().startswith("READONLY")
    ) or (isinstance(exc, redis.exceptions.ConnectionError) and _DEMOTED_PRIMARY in str(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


async def reconnect_if_stale(client: Redis, exc: BaseException) -> None:
    """After a READONLY (in `exc` or its causes), this client's connections point at a replica — the
    old primary after a fail-over: drop them all, so new ones are opened (and the name resolved, or the
    sentinels asked, notify_server.core.redis_client) again."""
    if any(_read_only(e) for e in _chain(exc)):
        await client.connection_pool.disconnect()
