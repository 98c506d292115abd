"""Redis clients: every process builds its clients here, from the `redis.*` settings, and nowhere else.

- Plain (`redis.sentinels` empty): `redis.url` names the server.
- Sentinel: each new connection asks the sentinels (`redis.sentinels`, first that answers) for the
  current primary of `redis.sentinel_master`; `redis.url` still gives the db number, user, password and
  TLS (its host and port are not used). After a fail-over, connections to the old primary fail (it died)
  or answer READONLY (it was demoted): redis-py's sentinel connections drop themselves on READONLY,
  `stores.reconnect_if_stale` drops the rest of the pool, and the next connection asks the sentinels
  again. Pub/sub subscribers reconnect the same way (the node's listener is supervised and resubscribes).

A producer that uses arq's own `create_pool` gets the same from arq's `RedisSettings(host=[(host,
port), ...], sentinel=True, sentinel_master=...)` (README "Redis Sentinel").
"""

from __future__ import annotations

import re
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from notify_server.core.settings import RedisSettings

# A sentinel that accepts the connection and then says nothing must not hold a reconnect for ever.
SENTINEL_TIMEOUT_S = 2.0

_HOST_PORT = re.compile(r"\[?([^\]]+?)\]?:(\d+)")


def sentinel_addresses(sentinels: tuple[str, ...]) -> list[tuple[str, int]]:
    """`host:port` items (validated by the settings) as (host, port) pairs; `[::1]:26379` gives ::1."""
    pairs = []
    for item in sentinels:
        match = _HOST_PORT.fullmatch(item)
        if match is None:
            raise ValueError(f"redis.sentinels: {item!r} is not host:port")
        pairs.append((match[1], int(match[2])))
    return pairs


class SentinelRedis(Redis):
    """The primary's client; closing it also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def redis_client(settings: RedisSettings, **options: Any) -> Redis:
    """A client of the current primary. `options` are redis-py's (health_check_interval, socket_timeout,
    max_connections, ...)."""
    if not settings.sentinels:
        plain: Redis = Redis.from_url(settings.url, **options)
        return plain
    url_options: dict[str, Any] = dict(parse_url(settings.url)) if settings.url else {}
    url_options.pop("host", None)
    url_options.pop("port", None)
    connection_class = url_options.pop("connection_class", None)
    if connection_class is UnixDomainSocketConnection:
        raise ValueError("redis.url: a unix:// URL cannot be used with redis.sentinels")
    tls = connection_class is SSLConnection
    tls_options = {key: value for key, value in url_options.items() if key.startswith("ssl_")}
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        **({"ssl": True, **tls_options} if tls else {}),
    }
    if settings.sentinel_password:
        sentinel_options["password"] = settings.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinel_addresses(settings.sentinels), sentinel_kwargs=sentinel_options)
    client: Redis = sentinel.master_for(
        settings.sentinel_master, redis_class=SentinelRedis, ssl=tls, **{**url_options, **options}
    )
    return client
