"""Applying the SQL files in migrations/ with yoyo-migrations.

Two `notify-server migrate` at once are serialised by a Postgres advisory lock held around yoyo
(yoyo's own lock table is itself created by the first run, which two first runs could race on).
The second run polls for that lock rather than waiting in `pg_advisory_lock`: a statement waiting
holds a snapshot, and `CREATE INDEX CONCURRENTLY` (0004) waits for every older snapshot of its
database to end — the first run would wait for the second, which waits for the first, for ever.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg2
import psycopg2.extensions
from yoyo import get_backend, read_migrations

from notify_server.storage.db import is_multi_host

logger = logging.getLogger("notify.migrations")

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_ADVISORY_LOCK_KEY = 0x6E6F7469  # "noti"
_LOCK_POLL_S = 0.2
# yoyo records what it applied here; a database without it has had no migration at all.
APPLIED_QUERY = "SELECT migration_id FROM _yoyo_migration"


def expected_migrations() -> list[str]:
    """The ids of every migration this version needs (the .sql files in migrations/, in order)."""
    return sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql") if not p.name.endswith(".rollback.sql"))


def missing_from(applied: list[str] | set[str]) -> list[str]:
    """Of the migrations this version needs, those not in `applied`."""
    done = set(applied)
    return [migration_id for migration_id in expected_migrations() if migration_id not in done]


def _yoyo_url(database_url: str) -> str:
    # yoyo reads host and port from the URL's netloc, which cannot hold libpq's list of hosts; it passes
    # query arguments on to psycopg2 as they are, so a multi-host URL goes there, for libpq to pick from.
    if is_multi_host(database_url):
        params = psycopg2.extensions.parse_dsn(database_url)
        return f"postgresql:///{quote(params.pop('dbname', ''))}?{urlencode(params)}"
    # yoyo names its psycopg2 backend "postgresql+psycopg2"; plain "postgresql://" picks it too,
    # but "postgres://" is not known to it.
    if database_url.startswith("postgres://"):
        return "postgresql://" + database_url[len("postgres://") :]
    return database_url


def _wait_for_lock(conn: psycopg2.extensions.connection) -> None:
    """Take the migration lock, trying again every _LOCK_POLL_S: no statement waits while another run
    builds an index concurrently (see the module's docstring)."""
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
            row = cur.fetchone()
            if row is not None and row[0]:
                return
            time.sleep(_LOCK_POLL_S)


def apply_migrations(database_url: str) -> list[str]:
    """Apply every pending migration; returns the ids applied (empty on a second run)."""
    lock_conn = psycopg2.connect(database_url)
    try:
        lock_conn.autocommit = True
        _wait_for_lock(lock_conn)
        backend = get_backend(_yoyo_url(database_url))
        try:
            migrations = read_migrations(str(MIGRATIONS_DIR))
            pending = backend.to_apply(migrations)
            with backend.lock():
                backend.apply_migrations(pending)
            applied = [m.id for m in pending]
        finally:
            backend.connection.close()
        for migration_id in applied:
            logger.info("applied migration %s", migration_id)
        return applied
    finally:
        lock_conn.close()  # closing the session releases the advisory lock
