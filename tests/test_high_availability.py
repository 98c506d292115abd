"""High availability without a fail-over (issue 21): the settings, the one Redis client factory, replica
acknowledgements refused by a Redis without replicas, and a multi-host database URL whose first host is
down. The fail-overs themselves (Sentinel, a promoted standby) are in tests/test_failover.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2.extensions
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError

from notify_server.auth.apikeys import new_api_key
from notify_server.core.redis_client import redis_client, sentinel_addresses
from notify_server.core.settings import ConfigError, DatabaseSettings, RedisSettings, Settings, settings_from_mapping
from notify_server.core.stores import Fault, classify
from notify_server.ingest.producer import EventProducer, NotReplicated, enqueue_event
from notify_server.storage.db import Database, is_multi_host, writable_host_dsn
from notify_server.storage.migrations import apply_migrations
from notify_server.storage.notifications import NotificationRepository
from notify_server.web.health import check_postgres, check_redis
from tests.fakes import claim_rejected, start_node
from tests.helpers import run_worker_burst

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY, DIGEST = new_api_key()
DOWN_HOST = "127.0.0.1:1"  # nothing listens there: refused at once


# ---------------------------------------------------------------- settings


def test_sentinel_keys_load_from_the_environment_as_a_list() -> None:
    settings = settings_from_mapping({}, {
        "NOTIFY_REDIS_SENTINELS": "10.0.0.5:26379, sentinel-b:26380,[::1]:26381",
        "NOTIFY_REDIS_SENTINEL_MASTER": "notify", "NOTIFY_REDIS_MIN_REPLICAS_ACKED": "1",
    })

    assert settings.redis.sentinels == ("10.0.0.5:26379", "sentinel-b:26380", "[::1]:26381")
    assert sentinel_addresses(settings.redis.sentinels) == [("10.0.0.5", 26379), ("sentinel-b", 26380), ("::1", 26381)]
    assert (settings.redis.sentinel_master, settings.redis.min_replicas_acked) == ("notify", 1)


@pytest.mark.parametrize(("environ", "message"), [
    ({"NOTIFY_REDIS_SENTINELS": "sentinel-a"}, "redis.sentinels.0: must be host:port"),
    ({"NOTIFY_REDIS_SENTINELS": "a:26379,b:99999"}, "redis.sentinels.1: must be host:port"),
    ({"NOTIFY_REDIS_SENTINELS": "a:26379", "NOTIFY_REDIS_URL": "unix:///tmp/redis.sock"},
     "redis.url: must be redis:// or rediss:// when redis.sentinels is set"),
    ({"NOTIFY_REDIS_MIN_REPLICAS_ACKED": "-1"}, "redis.min_replicas_acked:"),
    ({"NOTIFY_REDIS_REPLICA_ACK_TIMEOUT_MS": "0"}, "redis.replica_ack_timeout_ms:"),
    ({"NOTIFY_REDIS_SENTINEL_MASTER": ""}, "redis.sentinel_master:"),
    ({"NOTIFY_PORT": "9100", "NOTIFY_SERVER_METRICS_PORT": "9100"},
     "server.metrics_port: must differ from server.port"),
], ids=["no-port", "port-too-big", "unix-url", "negative-replicas", "zero-timeout", "empty-master",
        "metrics-port-is-the-port"])
def test_bad_high_availability_settings_are_refused_naming_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({}, environ)
    assert str(refused.value).startswith(message), str(refused.value)


def test_the_sentinel_password_stays_out_of_the_settings_repr() -> None:
    settings = RedisSettings(url="redis://mymaster/0", sentinels=("a:1",), sentinel_password="s3cret-sentinel")
    assert "s3cret-sentinel" not in repr(settings)


# ---------------------------------------------------------------- the client factory


async def test_a_plain_url_gives_a_client_of_that_server_and_db(settings: Settings) -> None:
    client = redis_client(settings.redis)
    try:
        assert not isinstance(client.connection_pool, SentinelConnectionPool)
        await client.set("notify:test:factory", "1")
        assert await client.get("notify:test:factory") == b"1"
    finally:
        await client.aclose()


async def test_with_sentinels_the_url_gives_db_user_password_and_tls_and_its_host_is_not_used() -> None:
    settings = RedisSettings(url="rediss://app:s3cret@ignored-host:6390/4?ssl_cert_reqs=none",
                             sentinels=("127.0.0.1:26379", "127.0.0.1:26380"), sentinel_master="notify",
                             sentinel_password="sentinel-pw")
    client = redis_client(settings, health_check_interval=30)
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert (pool.service_name, pool.is_master) == ("notify", True)
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (4, "app", "s3cret")
        assert kwargs["health_check_interval"] == 30 and "host" not in kwargs and "port" not in kwargs
        assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
        sentinels = pool.sentinel_manager.sentinels
        assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                for s in sentinels] == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
        assert all(s.connection_pool.connection_kwargs["password"] == "sentinel-pw" for s in sentinels)
    finally:
        await client.aclose()


async def test_no_sentinel_answering_is_a_transient_store_fault() -> None:
    settings = RedisSettings(url="redis://notify/0", sentinels=(DOWN_HOST,), sentinel_master="notify")
    client = redis_client(settings)
    try:
        with pytest.raises(Exception) as failed:
            await client.ping()
        assert classify(failed.value) is Fault.TRANSIENT
    finally:
        await client.aclose()


# ---------------------------------------------------------------- replica acknowledgements (no replica here)


async def test_an_enqueue_that_no_replica_confirms_fails_after_the_timeout_and_its_retry_is_a_duplicate(
    redis_client: Redis, settings: Settings
) -> None:
    event = claim_rejected("acked-1", "u1")

    with pytest.raises(NotReplicated) as refused:
        await enqueue_event(redis_client, event, queue_name=settings.queues.events, min_replicas_acked=1,
                            replica_ack_timeout_ms=50)

    assert str(refused.value).startswith("NOREPLICAS 0 of 1 required replica(s)")
    assert classify(refused.value) is Fault.TRANSIENT
    # It is on the primary (it may not survive a fail-over): the retry with the same id is refused as a
    # duplicate, and still fails while no replica confirms it.
    assert await redis_client.exists("arq:job:acked-1")
    with pytest.raises(NotReplicated):
        await enqueue_event(redis_client, event, queue_name=settings.queues.events, min_replicas_acked=1,
                            replica_ack_timeout_ms=50)
    assert await enqueue_event(redis_client, event, queue_name=settings.queues.events) is None


async def test_without_min_replicas_an_enqueue_does_not_wait(redis_client: Redis, settings: Settings) -> None:
    job = await enqueue_event(redis_client, claim_rejected("plain-1", "u1"), queue_name=settings.queues.events)
    assert job is not None and job.job_id == "plain-1"


async def test_the_wait_survives_a_flushed_script_cache(redis_client: Redis, settings: Settings) -> None:
    await redis_client.script_flush()
    with pytest.raises(NotReplicated):
        await enqueue_event(redis_client, claim_rejected("after-flush", "u1"), queue_name=settings.queues.events,
                            min_replicas_acked=1, replica_ack_timeout_ms=20)
    assert await redis_client.exists("arq:job:after-flush")
    # Elsewhere (a registered script on a restarted or promoted server) a NOSCRIPT is a transient fault.
    assert classify(NoScriptError("No matching script. Please use EVAL.")) is Fault.TRANSIENT


async def test_event_producer_from_settings_takes_the_queue_and_the_replica_rule(settings: Settings) -> None:
    waiting = settings.replace(redis={"min_replicas_acked": 1, "replica_ack_timeout_ms": 20})
    async with EventProducer.from_settings(waiting) as producer:
        with pytest.raises(NotReplicated):
            await producer.enqueue_event(claim_rejected("producer-1", "u1"))
        assert await producer.redis.zscore(settings.queues.events, "producer-1") is not None
    async with EventProducer.from_settings(settings) as producer:
        job = await producer.enqueue_event(claim_rejected("producer-2", "u1"))
        assert job is not None


@pytest.fixture
async def replicated_node(aiohttp_client: Any, settings: Settings) -> AsyncIterator[TestClient]:
    waiting = settings.replace(publish={"api_key_hashes": (DIGEST,)},
                               redis={"min_replicas_acked": 1, "replica_ack_timeout_ms": 20})
    yield await start_node(aiohttp_client, waiting)


async def test_publish_answers_503_while_fewer_replicas_than_required_confirm_and_loses_nothing(
    replicated_node: TestClient, settings: Settings, repository: NotificationRepository
) -> None:
    for path, body in (("/api/events", claim_rejected("pub-1", "u1")),
                       ("/api/events/batch", {"events": [claim_rejected("pub-2", "u1")]})):
        response = await replicated_node.post(path, json=body, headers={"X-API-Key": KEY})
        assert response.status == 503, await response.text()
        error = (await response.json())["error"]
        assert error["code"] == "unavailable"
        assert error["message"].startswith("not confirmed by enough Redis replicas (0 of 1); retry with the same")
    # Nothing was lost: both are queued on the primary and stored once by the worker.
    await run_worker_burst(settings)
    assert [n.event_id for n in (await repository.list_for_user("u1", limit=5)).items] == ["pub-2", "pub-1"]


def test_emit_says_to_retry_with_the_same_event_id_when_replicas_do_not_confirm(
    python: str, cli_env: dict[str, str]
) -> None:
    env = {**cli_env, "NOTIFY_REDIS_MIN_REPLICAS_ACKED": "1", "NOTIFY_REDIS_REPLICA_ACK_TIMEOUT_MS": "20"}
    result = subprocess.run(
        [python, "-m", "notify_server", "emit", "CLAIM_REJECTED", "--to", "u1", "--event-id", "emit-ha",
         "--data", '{"provider_name": "x", "claim_id": "y"}'],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("notify-server: event emit-ha queued but not confirmed by enough Redis replicas "
                                     "(0 of 1): run emit again with --event-id emit-ha")


async def test_check_names_the_missing_replicas(settings: Settings) -> None:
    problem, _ = await check_redis(RedisSettings(url=settings.redis.url, min_replicas_acked=1))
    assert problem == ("Redis primary has 0 replica(s) attached and redis.min_replicas_acked is 1: every "
                       "enqueue would fail until enough replicas attach")


# ---------------------------------------------------------------- a multi-host database URL


def multi_host(url: str) -> str:
    """The test database behind a first host that is down (libpq tries it, then the next)."""
    head, rest = url.split("://", 1)
    userinfo, hostpart = rest.split("@", 1)
    host, path = hostpart.split("/", 1)
    return f"{head}://{userinfo}@{DOWN_HOST},{host}/{path}?target_session_attrs=read-write"


async def test_a_multi_host_url_whose_first_host_is_down_reaches_the_next_one(settings: Settings) -> None:
    url = multi_host(settings.database.url)
    assert is_multi_host(url) and not is_multi_host(settings.database.url)
    kept = psycopg2.extensions.parse_dsn(writable_host_dsn(url))
    assert (kept["host"], kept["port"]) == (urlsplit(settings.database.url).hostname,
                                            str(urlsplit(settings.database.url).port or 5432))

    db = Database(DatabaseSettings(url=url, pool_min_size=1, pool_max_size=2))
    try:
        async with db.connection() as conn, conn.cursor() as cur:
            await cur.execute("SELECT current_database()")
            assert (await cur.fetchone())[0] == settings.database.url.rsplit("/", 1)[1]
    finally:
        await db.close()
    assert await check_postgres(url) is None
    assert apply_migrations(url) == []  # yoyo reaches it too (already migrated: nothing to apply)


async def test_a_multi_host_url_with_every_host_down_is_a_transient_fault() -> None:
    db = Database(DatabaseSettings(url=f"postgresql://postgres@{DOWN_HOST},127.0.0.1:2/x?target_session_attrs=read-write"))
    try:
        with pytest.raises(Exception) as failed:
            async with db.connection():
                pass
        assert classify(failed.value) is Fault.TRANSIENT
    finally:
        await db.close()
