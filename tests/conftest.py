"""Shared fixtures: a throw-away Postgres database and Redis db per run, cleaned before every test."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiopg
import psycopg2
import pytest
import redis
from redis.asyncio import Redis

from notify_server.core.settings import Settings, load_settings
from notify_server.storage.db import Database
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.sessions import SessionStore
from tests.services import TEST_CLAIM_KEY, postgres_server, redis_server, throwaway_database, throwaway_redis_db

REPO_ROOT = Path(__file__).resolve().parent.parent


# Fixtures that start `python -m notify_server …` children (about a second each just to import): tests using
# them are marked `process`, and the quick loop (scripts/test.sh --fast) leaves them to the full run.
PROCESS_FIXTURES = frozenset(("cli_env", "python", "processes"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with postgres_server() as server, throwaway_database(server) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as server, throwaway_redis_db(server) as url:
        yield url


@pytest.fixture
def clean_stores(database_url: str, redis_url: str) -> None:
    """Empty tables and Redis db before each test that touches them."""
    conn = psycopg2.connect(database_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            # DELETE, not TRUNCATE: on tables this small it is a third of the time, once per test.
            cur.execute("DELETE FROM sessions; DELETE FROM notifications; DELETE FROM unread_counters;"
                        " DELETE FROM notification_preferences; DELETE FROM digest_held; DELETE FROM digest_windows")
    finally:
        conn.close()
    client = redis.Redis.from_url(redis_url)
    try:
        claim = client.get(TEST_CLAIM_KEY)
        client.flushdb()
        if claim:
            client.set(TEST_CLAIM_KEY, claim, ex=3600)
    finally:
        client.close()


@pytest.fixture
def settings(database_url: str, redis_url: str, clean_stores: None) -> Settings:
    """The repository's config.yaml, pointed at the test stores, with short timings for tests."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    base = load_settings(REPO_ROOT / "config.yaml", environ=environ)
    return base.replace(
        database={"url": database_url, "pool_min_size": 1, "pool_max_size": 5},
        redis={"url": redis_url},
        worker={"poll_delay_s": 0.01, "retry_backoff_max_s": 0.2, "max_tries": 5},
        server={"shutdown_timeout_s": 1.0},
    )


@pytest.fixture
async def db_pool(settings: Settings) -> AsyncIterator[Any]:
    """A plain aiopg pool, for the tests' own SQL."""
    pool = await aiopg.create_pool(settings.database.url, minsize=1, maxsize=5)
    yield pool
    pool.close()
    await pool.wait_closed()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The service's own Database (what the repositories run on)."""
    database = Database(settings.database)
    yield database
    await database.close()


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis.url)
    yield client
    await client.aclose()


@pytest.fixture
def sessions(db: Database) -> SessionStore:
    return SessionStore(db)


@pytest.fixture
def repository(db: Database) -> NotificationRepository:
    return NotificationRepository(db)


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    """Environment for running `python -m notify_server …` against the test stores."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(NOTIFY_DATABASE_URL=settings.database.url, NOTIFY_REDIS_URL=settings.redis.url)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@pytest.fixture
def python() -> str:
    return sys.executable
