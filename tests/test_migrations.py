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
    "0005_store_events_function", "0006_store_events_custom_plans", "0007_inbox", "0008_preferences_digests",
    "0009_push_subscriptions",  # issue 20
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
    # A plan cached while the table was empty would scan all of it on every batch for ever (0006); the
    # worker calls notify_store_events_v2 since 0007 (notify_store_events is a wrapper of it).
    rows = query(database_url, "SELECT proconfig FROM pg_proc WHERE proname = 'notify_store_events_v2'")
    assert rows == [(["plan_cache_mode=force_custom_plan"],)], rows


def test_0007_on_a_populated_database_counts_every_unread_one_unseen_and_runs_again_safely(
    fresh_database_url: str,
) -> None:
    """The inbox migration on rows stored before it: nothing was seen or archived, so each user's unseen
    count is their unread count, and rows read before it are seen (at the time they were read). A run cut
    short in its index builds is run again by the next `migrate`: the file as a whole is safe to repeat."""
    from yoyo import get_backend, read_migrations

    from notify_server.storage.migrations import MIGRATIONS_DIR

    backend = get_backend(fresh_database_url)
    with backend.lock():
        backend.apply_migrations(backend.to_apply(read_migrations(str(MIGRATIONS_DIR)).filter(
            lambda m: m.id < "0007")))
    backend.connection.close()
    conn = psycopg2.connect(fresh_database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, read_at)"
                " SELECT 'u' || (g % 7), 'e' || g, 'E', 't', 'b', 'LOW', CASE WHEN g % 3 = 0 THEN now() END"
                " FROM generate_series(1, 300) AS g")
            cur.execute("INSERT INTO unread_counters (user_id, unread, version) SELECT recipient_id,"
                        " count(*) FILTER (WHERE read_at IS NULL), 1 FROM notifications GROUP BY 1")

            assert apply_migrations(fresh_database_url)[0] == "0007_inbox"  # (then any later ones)

            cur.execute("SELECT user_id, unread, unseen FROM unread_counters ORDER BY 1")
            after = cur.fetchall()
            assert len(after) == 7 and all(unread == unseen > 0 for _, unread, unseen in after), after
            cur.execute("SELECT count(*) FROM notifications WHERE seen_at IS NOT NULL OR archived_at IS NOT NULL")
            assert cur.fetchone() == (0,)  # no row rewritten: read ones are seen by their read_at

            cur.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0007_inbox'")
            assert apply_migrations(fresh_database_url) == ["0007_inbox"]

            cur.execute("SELECT user_id, unread, unseen FROM unread_counters ORDER BY 1")
            assert cur.fetchall() == after
            cur.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'notifications'::regclass"
                        " AND NOT indisvalid")
            assert cur.fetchall() == []
            cur.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'notifications'::regclass")
            names = {name for (name,) in cur.fetchall()}
            assert {"notifications_recipient_inbox", "notifications_archived_unread"} <= names
            assert not names & {"notifications_recipient_newest", "notifications_recipient_unread"}
    finally:
        conn.close()
