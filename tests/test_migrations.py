"""Migrations (SPEC §3 `migrate`, §6 tables): applied once, safe to run twice and at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from notify_server.storage.migrations import apply_migrations

EXPECTED_MIGRATIONS = [
    "0001_sessions", "0002_notifications", "0003_unread_counters", "0004_retention_indexes",
    "0005_store_events_function", "0006_store_events_custom_plans", "0008_preferences_digests",
]


@contextmanager
def empty_database(database_url: str) -> Iterator[str]:
    """A new, unmigrated database on the server of `database_url`, dropped afterwards."""
    parts = urlsplit(database_url)
    name = f"notify_test_mig_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(database_url)  # any database of the server can create another
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(parts._replace(path="/" + name))
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def fresh_database_url(database_url: str) -> Iterator[str]:
    with empty_database(database_url) as url:
        yield url


def query(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def columns(url: str, table: str) -> dict[str, tuple[str, str]]:
    rows = query(
        url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    )
    return {str(name): (str(kind), str(nullable)) for name, kind, nullable in rows}


def test_first_run_applies_both_migrations(fresh_database_url: str) -> None:
    assert apply_migrations(fresh_database_url) == EXPECTED_MIGRATIONS


def test_second_run_applies_nothing(fresh_database_url: str) -> None:
    apply_migrations(fresh_database_url)

    assert apply_migrations(fresh_database_url) == []


def test_two_concurrent_runs_both_succeed_and_create_each_table_once(fresh_database_url: str) -> None:
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(apply_migrations(fresh_database_url))
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(results, key=len) == [[], EXPECTED_MIGRATIONS]
    tables = query(
        fresh_database_url,
        "SELECT table_name, count(*) FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_name IN ('sessions', 'notifications') GROUP BY table_name",
    )
    assert sorted(tables) == [("notifications", 1), ("sessions", 1)]


def test_sessions_table_has_the_spec_columns(database_url: str) -> None:
    assert columns(database_url, "sessions") == {
        "token_hash": ("text", "NO"),
        "user_id": ("text", "NO"),
        "created_at": ("timestamp with time zone", "NO"),
        "expires_at": ("timestamp with time zone", "NO"),
        "revoked_at": ("timestamp with time zone", "YES"),
    }


def test_sessions_primary_key_is_the_token_hash(database_url: str) -> None:
    rows = query(
        database_url,
        "SELECT kcu.column_name FROM information_schema.table_constraints tc"
        " JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)"
        " WHERE tc.table_name = 'sessions' AND tc.constraint_type = 'PRIMARY KEY'",
    )
    assert rows == [("token_hash",)]


def test_notifications_table_has_the_spec_columns(database_url: str) -> None:
    found = columns(database_url, "notifications")

    expected = {
        "notification_id": ("uuid", "NO"),
        "recipient_id": ("text", "NO"),
        "recipient_email": ("text", "YES"),
        "event_id": ("text", "NO"),
        "event_type": ("text", "NO"),
        "title": ("text", "NO"),
        "body": ("text", "NO"),
        "priority": ("text", "NO"),
        "action_url": ("text", "YES"),
        "metadata": ("jsonb", "NO"),
        "created_at": ("timestamp with time zone", "NO"),
        "read_at": ("timestamp with time zone", "YES"),
    }
    assert {name: found.get(name) for name in expected} == expected


def test_notifications_are_unique_on_event_and_recipient(database_url: str) -> None:
    rows = query(
        database_url,
        "SELECT tc.constraint_name, array_agg(kcu.column_name::text ORDER BY kcu.ordinal_position)"
        " FROM information_schema.table_constraints tc"
        " JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)"
        " WHERE tc.table_name = 'notifications' AND tc.constraint_type = 'UNIQUE'"
        " GROUP BY tc.constraint_name",
    )
    assert [names for _, names in rows] == [["event_id", "recipient_id"]]


def test_duplicate_event_recipient_row_is_refused_by_the_database(fresh_database_url: str) -> None:
    apply_migrations(fresh_database_url)
    conn = psycopg2.connect(fresh_database_url)
    try:
        with conn.cursor() as cur:
            insert = (
                "INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority)"
                " VALUES ('u1', 'evt-1', 'E', 't', 'b', 'LOW')"
            )
            cur.execute(insert)
            with pytest.raises(psycopg2.errors.UniqueViolation):
                cur.execute(insert)
    finally:
        conn.close()


def test_notifications_are_indexed_by_recipient(database_url: str) -> None:
    indexes = query(
        database_url, "SELECT indexdef FROM pg_indexes WHERE tablename = 'notifications' AND indexdef LIKE %s",
        ("%(recipient_id%",),
    )
    definitions = [str(definition) for (definition,) in indexes]
    assert any("WHERE (read_at IS NULL)" in d for d in definitions), definitions  # unread of user X
    assert any("WHERE" not in d for d in definitions), definitions  # newest of user X


def test_the_store_function_plans_each_call_afresh(database_url: str) -> None:
    # A plan cached while the table was empty would scan all of it on every batch for ever (0006).
    rows = query(database_url, "SELECT proconfig FROM pg_proc WHERE proname = 'notify_store_events'")
    assert rows == [(["plan_cache_mode=force_custom_plan"],)], rows
