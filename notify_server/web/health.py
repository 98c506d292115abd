"""What `notify-server check` verifies: Postgres reachable and fully migrated, Redis reachable and keeping
enqueued events on disk (warned, not refused: the events not yet processed live only in Redis)."""

from __future__ import annotations

import asyncio

import aiopg
import psycopg2
import psycopg2.errors
import redis.exceptions

from notify_server.core.redis_client import redis_client
from notify_server.core.settings import RedisSettings
from notify_server.storage.db import writable_host_dsn
from notify_server.storage.migrations import APPLIED_QUERY, missing_from

CHECK_TIMEOUT_S = 5.0


async def check_postgres(url: str) -> str | None:
    """None when Postgres answers and every migration of this version is applied; else one line."""
    try:
        dsn = await asyncio.to_thread(writable_host_dsn, url)  # a multi-host URL: the host libpq keeps
        async with aiopg.connect(dsn, timeout=CHECK_TIMEOUT_S) as conn, conn.cursor() as cur:
            try:
                await cur.execute(APPLIED_QUERY)
                applied = [row[0] for row in await cur.fetchall()]
            except psycopg2.errors.UndefinedTable:
                applied = []
    except (TimeoutError, psycopg2.Error, OSError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot reach Postgres: {detail}"
    missing = missing_from(applied)
    if missing:
        return f"Postgres is reachable but not migrated (missing {', '.join(missing)}): run `notify-server migrate`"
    return None


async def check_redis(settings: RedisSettings) -> tuple[str | None, list[str]]:
    """(problem or None, warnings). Warns when Redis keeps nothing on disk (neither AOF nor RDB); a problem
    when fewer replicas are attached than `redis.min_replicas_acked` (every enqueue would fail)."""
    client = redis_client(settings, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    try:
        await client.ping()
        info = await client.info("persistence")
        replication = await client.info("replication")
        # Replicas past their first sync (state=online): the ones WAIT counts.
        replicas = sum(1 for key, value in replication.items()
                       if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")
        try:
            save = (await client.config_get("save")).get("save", "")
        except redis.exceptions.ResponseError:  # CONFIG is often disabled on managed Redis
            save = None
    except (redis.exceptions.RedisError, OSError) as exc:
        where = f" (sentinels {', '.join(settings.sentinels)})" if settings.sentinels else ""
        return f"cannot reach Redis{where}: {exc}", []
    finally:
        await client.aclose()
    if replicas < settings.min_replicas_acked:
        return (f"Redis primary has {replicas} replica(s) attached and redis.min_replicas_acked is "
                f"{settings.min_replicas_acked}: every enqueue would fail until enough replicas attach"), []
    warnings = []
    if not int(info.get("aof_enabled", 0)) and save == "":
        warnings.append(
            "Redis keeps nothing on disk (appendonly no, no save points): events enqueued and not yet processed "
            "are lost if Redis restarts; set `appendonly yes` (with `appendfsync everysec`, at most about a second "
            "of events is lost on a crash)"
        )
    return None, warnings
