"""Retention (issue 13): old notifications and sessions pruned in batches, counts kept exact.

Rows are created with old timestamps directly in SQL, as years of use would have left them; the prune
runs as production runs it (the worker's `prune_once`, its periodic loop, `notify-server prune`), over
the run's real Postgres and Redis, and a real node's tab watches its count fall.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import pytest

from notify_server.core.settings import ConfigError, Settings, load_settings
from notify_server.storage.db import Database
from notify_server.storage.migrations import apply_migrations
from notify_server.storage.inbox import InboxFilter
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient, UnknownCursor
from notify_server.storage.retention import PRUNE_LOCK_KEY, Pruner, PruneResult
from notify_server.storage.sessions import SessionStore
from tests.fakes import open_tab, receive_frame, start_node, wait_until, wait_until_async
from tests.helpers import insert
from tests.processes import free_port
from tests.test_migrations import empty_database, query
from workers.consumer import EventConsumer
from workers.context import WorkerContext
from workers.digests import DIGEST_LOOP_NAME
from workers.pruning import PRUNE_LOOP_NAME, prune_once

REPO_ROOT = Path(__file__).resolve().parent.parent
RETENTION_INDEXES = ("notifications_read_at", "notifications_unread_recipient_created", "sessions_expires_at",
                     "sessions_revoked_at")


# ---------------------------------------------------------------- rows of another age, in plain SQL


async def execute(db_pool: Any, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, params)
        return list(await cur.fetchall()) if cur.description else []


async def add_notification(
    db_pool: Any, user_id: str, *, age_days: float, read_days_ago: float | None = None, event_id: str = ""
) -> str:
    """One notification created `age_days` ago, read `read_days_ago` ago (None: unread); its id."""
    [(notification_id,)] = await execute(
        db_pool,
        "INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, created_at, read_at)"
        " VALUES (%s, %s, 'CLAIM_REJECTED', 'Claim Rejected', 'b', 'HIGH',"
        "         now() - make_interval(secs => %s * 86400),"
        "         CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => %s * 86400) END)"
        " RETURNING notification_id",
        (user_id, event_id or f"evt-{uuid.uuid4().hex}", age_days,
         read_days_ago, read_days_ago),
    )
    return str(notification_id)


async def add_many(db_pool: Any, user_id: str, count: int, *, age_days: float, read: bool) -> None:
    await execute(
        db_pool,
        "INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, created_at, read_at)"
        " SELECT %s, %s || '-' || g, 'CLAIM_REJECTED', 'Claim Rejected', 'b', 'HIGH',"
        "        now() - make_interval(secs => %s * 86400 + g),"
        "        CASE WHEN %s THEN now() - make_interval(secs => %s * 86400 + g) END"
        " FROM generate_series(1, %s) AS g",
        (user_id, f"bulk-{user_id}-{age_days}-{read}", age_days, read, age_days, count),
    )


async def add_session(db_pool: Any, token_hash: str, *, expires_in_days: float, revoked_days_ago: float | None = None
                      ) -> None:
    await execute(
        db_pool,
        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at, revoked_at)"
        " VALUES (%s, 'someone', now() - interval '400 days', now() + make_interval(secs => %s * 86400),"
        "         CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => %s * 86400) END)",
        (token_hash, expires_in_days, revoked_days_ago, revoked_days_ago),
    )


async def recount(db_pool: Any, version: int = 5) -> None:
    """Set every recipient's counters from its rows (as migrations 0003 and 0007 do), at this version."""
    await execute(
        db_pool,
        "INSERT INTO unread_counters (user_id, unread, unseen, version)"
        " SELECT recipient_id, count(*) FILTER (WHERE read_at IS NULL AND archived_at IS NULL),"
        " count(*) FILTER (WHERE seen_at IS NULL AND read_at IS NULL AND archived_at IS NULL), %s"
        " FROM notifications GROUP BY recipient_id"
        " ON CONFLICT (user_id) DO UPDATE SET unread = EXCLUDED.unread, unseen = EXCLUDED.unseen,"
        " version = EXCLUDED.version",
        (version,),
    )


async def counters(db_pool: Any) -> dict[str, tuple[int, int]]:
    rows = await execute(db_pool, "SELECT user_id, unread, version FROM unread_counters")
    return {u: (int(n), int(v)) for u, n, v in rows}


async def unread_rows(db_pool: Any) -> dict[str, int]:
    rows = await execute(
        db_pool, "SELECT recipient_id, count(*) FROM notifications WHERE read_at IS NULL GROUP BY recipient_id"
    )
    return {u: int(n) for u, n in rows}


async def remaining_ids(db_pool: Any) -> set[str]:
    return {str(row[0]) for row in await execute(db_pool, "SELECT notification_id FROM notifications")}


async def remaining_sessions(db_pool: Any) -> set[str]:
    return {str(row[0]) for row in await execute(db_pool, "SELECT token_hash FROM sessions")}


def with_retention(settings: Settings, **values: Any) -> Settings:
    return settings.replace(retention=values)


@dataclasses.dataclass
class Seeded:
    """One of each: what the default retention (90 / 365 / 7 days) deletes and what it keeps."""

    read_old: str  # read 100 days ago: deleted
    read_recent_of_an_old: str  # created 400 days ago, read 10 days ago: kept (read_days counts from the read)
    unread_old: str  # created 400 days ago, unread: deleted
    unread_recent: str  # created 300 days ago, unread: kept
    sessions_kept: set[str]


async def seed(db_pool: Any) -> Seeded:
    seeded = Seeded(
        read_old=await add_notification(db_pool, "alice", age_days=120, read_days_ago=100),
        read_recent_of_an_old=await add_notification(db_pool, "alice", age_days=400, read_days_ago=10),
        unread_old=await add_notification(db_pool, "alice", age_days=400),
        unread_recent=await add_notification(db_pool, "alice", age_days=300),
        sessions_kept={"live", "expired-3-days-ago", "revoked-2-days-ago"},
    )
    await add_session(db_pool, "live", expires_in_days=1)
    await add_session(db_pool, "expired-3-days-ago", expires_in_days=-3)
    await add_session(db_pool, "revoked-2-days-ago", expires_in_days=30, revoked_days_ago=2)
    await add_session(db_pool, "expired-10-days-ago", expires_in_days=-10)
    await add_session(db_pool, "revoked-8-days-ago", expires_in_days=30, revoked_days_ago=8)
    await recount(db_pool)
    return seeded


@pytest.fixture
async def worker_context(settings: Settings) -> AsyncIterator[WorkerContext]:
    context = WorkerContext.build(settings)
    yield context
    await context.close()


@pytest.fixture
async def statement_log(db_pool: Any) -> AsyncIterator[None]:
    """Every DELETE on notifications and sessions and every UPDATE of unread_counters, logged per statement
    with its transaction id and row count (in prune_log), while the test runs."""
    await execute(db_pool, """
        CREATE TABLE prune_log (at bigserial, txid bigint, tbl text, rows bigint);
        CREATE FUNCTION log_prune_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO prune_log (txid, tbl, rows) SELECT txid_current(), TG_TABLE_NAME, count(*) FROM changed;
          RETURN NULL;
        END $$;
        CREATE TRIGGER log_notifications_deleted AFTER DELETE ON notifications
          REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION log_prune_statement();
        CREATE TRIGGER log_sessions_deleted AFTER DELETE ON sessions
          REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION log_prune_statement();
        CREATE TRIGGER log_counters_updated AFTER UPDATE ON unread_counters
          REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION log_prune_statement();
    """)
    try:
        yield
    finally:
        await execute(db_pool, """
            DROP TRIGGER log_notifications_deleted ON notifications;
            DROP TRIGGER log_sessions_deleted ON sessions;
            DROP TRIGGER log_counters_updated ON unread_counters;
            DROP FUNCTION log_prune_statement();
            DROP TABLE prune_log;
        """)


async def logged_statements(db_pool: Any) -> list[tuple[int, str, int]]:
    """(txid, table, rows) of every logged statement that changed a row, in order."""
    rows = await execute(db_pool, "SELECT txid, tbl, rows FROM prune_log WHERE rows > 0 ORDER BY at")
    return [(int(t), str(table), int(n)) for t, table, n in rows]


# ---------------------------------------------------------------- what goes, what stays


async def test_prune_deletes_each_kind_past_its_age_and_keeps_the_rest(
    settings: Settings, db_pool: Any, worker_context: WorkerContext
) -> None:
    seeded = await seed(db_pool)

    result = await prune_once(worker_context)

    assert result == PruneResult(read=1, unread=1, sessions=2)
    assert await remaining_ids(db_pool) == {seeded.read_recent_of_an_old, seeded.unread_recent}
    assert await remaining_sessions(db_pool) == seeded.sessions_kept
    assert await prune_once(worker_context) == PruneResult()  # nothing left to delete


async def test_dry_run_counts_what_the_prune_would_delete_and_deletes_nothing(
    settings: Settings, db_pool: Any, db: Database
) -> None:
    await seed(db_pool)
    before = (await remaining_ids(db_pool), await remaining_sessions(db_pool), await counters(db_pool))

    would = await Pruner(db, settings.retention).count()

    assert would == PruneResult(read=1, unread=1, sessions=2, dry_run=True)
    assert (await remaining_ids(db_pool), await remaining_sessions(db_pool), await counters(db_pool)) == before
    assert await Pruner(db, settings.retention).prune() == PruneResult(read=1, unread=1, sessions=2)


async def test_unread_days_zero_keeps_unread_notifications_for_ever(settings: Settings, db_pool: Any, db: Database
                                                                    ) -> None:
    seeded = await seed(db_pool)
    ancient = await add_notification(db_pool, "bob", age_days=5000)
    retention = with_retention(settings, unread_days=0).retention

    assert await Pruner(db, retention).count() == PruneResult(read=1, unread=0, sessions=2, dry_run=True)
    assert await Pruner(db, retention).prune() == PruneResult(read=1, unread=0, sessions=2)
    assert {seeded.unread_old, seeded.unread_recent, ancient} <= await remaining_ids(db_pool)


async def test_shorter_ages_delete_more(settings: Settings, db_pool: Any, db: Database) -> None:
    seeded = await seed(db_pool)
    retention = with_retention(settings, read_days=0, unread_days=200, sessions_days=0).retention

    assert await Pruner(db, retention).prune() == PruneResult(read=2, unread=2, sessions=4)
    assert await remaining_ids(db_pool) == set()
    assert await remaining_sessions(db_pool) == {"live"}
    assert seeded.unread_recent not in await remaining_ids(db_pool)


# ---------------------------------------------------------------- archived notifications (issue 18)


async def set_states(db_pool: Any, notification_id: str, *, archived_days_ago: float | None = None,
                     seen: bool = False) -> None:
    await execute(
        db_pool,
        "UPDATE notifications SET archived_at = CASE WHEN %s::float8 IS NULL THEN NULL"
        " ELSE now() - make_interval(secs => %s * 86400) END, seen_at = CASE WHEN %s THEN created_at END"
        " WHERE notification_id = %s",
        (archived_days_ago, archived_days_ago, seen, notification_id),
    )


async def test_archived_notifications_never_read_go_read_days_after_they_were_archived(
    settings: Settings, db_pool: Any, db: Database
) -> None:
    """Archiving is the other way of being done with a notification: an archived one that was never read
    goes `read_days` after it was archived; a read one goes by its read_at as before; counts stay exact."""
    archived_long_ago = await add_notification(db_pool, "alice", age_days=120)
    await set_states(db_pool, archived_long_ago, archived_days_ago=100)  # due: archived > 90 days ago
    archived_lately = await add_notification(db_pool, "alice", age_days=120)
    await set_states(db_pool, archived_lately, archived_days_ago=10)  # kept
    read_lately_archived_long_ago = await add_notification(db_pool, "alice", age_days=200, read_days_ago=5)
    await set_states(db_pool, read_lately_archived_long_ago, archived_days_ago=150)  # kept: read 5 days ago
    ancient_archived = await add_notification(db_pool, "alice", age_days=400)
    await set_states(db_pool, ancient_archived, archived_days_ago=1)  # due by unread_days (created 400 days ago)
    ancient_unseen = await add_notification(db_pool, "alice", age_days=400)  # due, counted: unread and unseen
    ancient_seen = await add_notification(db_pool, "alice", age_days=400)  # due, counted: unread, seen
    await set_states(db_pool, ancient_seen, seen=True)
    recent = await add_notification(db_pool, "alice", age_days=1)
    await recount(db_pool, version=5)
    assert (await counters(db_pool))["alice"] == (3, 5)

    assert await Pruner(db, settings.retention).count() == PruneResult(read=0, unread=3, archived=1, sessions=0,
                                                                       dry_run=True)
    assert await Pruner(db, settings.retention).prune() == PruneResult(read=0, unread=3, archived=1, sessions=0)

    assert await remaining_ids(db_pool) == {archived_lately, read_lately_archived_long_ago, recent}
    [(unread, unseen, version)] = await execute(
        db_pool, "SELECT unread, unseen, version FROM unread_counters WHERE user_id = 'alice'")
    assert (unread, unseen, version) == (1, 1, 6)  # the archived ones were counted nowhere


# ---------------------------------------------------------------- unread counts stay exact


async def test_pruning_unread_notifications_lowers_each_count_and_bumps_its_version(
    settings: Settings, db_pool: Any, db: Database
) -> None:
    await add_many(db_pool, "alice", 7, age_days=400, read=False)  # pruned
    await add_many(db_pool, "alice", 3, age_days=10, read=False)  # kept
    await add_many(db_pool, "bob", 4, age_days=500, read=False)  # pruned: bob has none left
    await add_many(db_pool, "carol", 2, age_days=30, read=False)  # untouched
    await add_many(db_pool, "carol", 6, age_days=400, read=True)  # read (400 days ago): no count changes
    await recount(db_pool, version=5)

    result = await Pruner(db, with_retention(settings, batch_rows=1000).retention).prune()

    assert result == PruneResult(read=6, unread=11, sessions=0)
    assert await counters(db_pool) == {"alice": (3, 6), "bob": (0, 6), "carol": (2, 5)}
    assert await unread_rows(db_pool) == {"alice": 3, "carol": 2}


async def test_counts_stay_exact_when_a_user_is_pruned_over_several_batches(
    settings: Settings, db_pool: Any, db: Database
) -> None:
    await add_many(db_pool, "alice", 10, age_days=400, read=False)
    await add_many(db_pool, "alice", 1, age_days=1, read=False)
    await recount(db_pool, version=5)

    result = await Pruner(db, with_retention(settings, batch_rows=4).retention).prune()

    assert result.unread == 10
    # Three batches (4 + 4 + 2), each lowering the count and bumping the version once.
    assert await counters(db_pool) == {"alice": (1, 8)}


async def test_counts_stay_exact_while_events_are_stored_and_read_during_the_prune(
    settings: Settings, db_pool: Any, db: Database, repository: NotificationRepository
) -> None:
    """Inserts (store_events: counters first) and mark-read (rows first) for the same users while small
    batches delete their old unread rows: no deadlock, and every count ends equal to its unread rows."""
    users = [f"u{n}" for n in range(8)]
    for user in users:
        await add_many(db_pool, user, 60, age_days=400, read=False)
    await recount(db_pool, version=1)

    async def store(n: int) -> None:
        await insert(repository, NewNotifications(
            event_id=f"live-{n}", event_type="CLAIM_REJECTED", title="t", body="b", priority="HIGH",
            action_url=None, metadata={}, recipients=[Recipient(u) for u in reversed(users)],
        ))

    async def read_all(user: str) -> None:
        await repository.change(user, "read", inbox=InboxFilter())

    pruner = Pruner(db, with_retention(settings, batch_rows=7).retention)
    results = await asyncio.gather(
        pruner.prune(), *(store(n) for n in range(20)), *(read_all(u) for u in users[::2])
    )

    pruned = results[0]
    assert pruned is not None and pruned.unread > 0
    exact = await unread_rows(db_pool)
    assert {u: n for u, (n, _) in (await counters(db_pool)).items() if n or u in exact} == exact


# ---------------------------------------------------------------- batches, each its own transaction


async def test_each_batch_deletes_at_most_batch_rows_in_its_own_transaction(
    settings: Settings, db_pool: Any, db: Database, statement_log: None
) -> None:
    await add_many(db_pool, "alice", 10, age_days=100, read=True)
    await add_many(db_pool, "bob", 4, age_days=400, read=False)
    await add_many(db_pool, "carol", 3, age_days=400, read=False)
    await recount(db_pool)
    for n in range(5):
        await add_session(db_pool, f"old-{n}", expires_in_days=-30)
    await execute(db_pool, "TRUNCATE prune_log")  # the seeding's own statements

    result = await Pruner(db, with_retention(settings, batch_rows=3).retention).prune()

    assert result == PruneResult(read=10, unread=7, sessions=5)
    statements = await logged_statements(db_pool)
    deletes = [(txid, table, rows) for txid, table, rows in statements if table != "unread_counters"]
    assert [rows for _, _, rows in deletes] == [3, 3, 3, 1, 3, 3, 1, 3, 2]  # read, unread, sessions
    assert len({txid for txid, _, _ in deletes}) == len(deletes), "two batches shared a transaction"
    # Every batch of unread notifications changed the counters in its own transaction, and only those.
    unread_txids = [txid for txid, table, _ in deletes[4:7]]
    counter_txids = [txid for txid, table, _ in statements if table == "unread_counters"]
    assert counter_txids == unread_txids


# ---------------------------------------------------------------- one prune at a time


async def test_a_prune_skips_while_another_holds_the_lock(settings: Settings, db_pool: Any, db: Database) -> None:
    await seed(db_pool)
    before = await remaining_ids(db_pool)
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK_KEY,))
        try:
            assert await Pruner(db, settings.retention).prune() is None
            assert await remaining_ids(db_pool) == before
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))

    assert await Pruner(db, settings.retention).prune() == PruneResult(read=1, unread=1, sessions=2)


async def test_two_prunes_at_once_one_prunes_the_other_skips(settings: Settings, db_pool: Any) -> None:
    await add_many(db_pool, "alice", 40, age_days=100, read=True)
    retention = with_retention(settings, batch_rows=2).retention
    databases = [Database(settings.database), Database(settings.database)]  # two workers' pools
    try:
        results = await asyncio.gather(*(Pruner(d, retention).prune() for d in databases))
    finally:
        for database in databases:
            await database.close()

    assert sorted(results, key=lambda r: r is None) == [PruneResult(read=40), None]
    assert await remaining_ids(db_pool) == set()


# ---------------------------------------------------------------- open tabs and catch-up


async def test_an_open_tab_sees_its_count_fall_when_unread_notifications_are_pruned(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, db_pool: Any, worker_context: WorkerContext
) -> None:
    await add_many(db_pool, "alice", 3, age_days=400, read=False)
    await add_notification(db_pool, "alice", age_days=1)
    await recount(db_pool, version=5)
    client = await start_node(aiohttp_client, settings)
    tab = await open_tab(client, (await sessions.create("alice", 3600)).token)
    first = await receive_frame(tab)
    assert first == {"type": "unread_count", "data": {"count": 4, "unseen": 4, "version": 5}}

    await prune_once(worker_context)

    assert await receive_frame(tab) == {"type": "unread_count", "data": {"count": 1, "unseen": 1, "version": 6}}
    await tab.close()


async def test_since_a_pruned_notification_gets_resync(
    aiohttp_client: Any, settings: Settings, sessions: SessionStore, db_pool: Any, worker_context: WorkerContext,
    repository: NotificationRepository,
) -> None:
    pruned = await add_notification(db_pool, "alice", age_days=400)
    later = await add_notification(db_pool, "alice", age_days=1)
    await recount(db_pool)
    client = await start_node(aiohttp_client, settings)
    token = (await sessions.create("alice", 3600)).token

    async def reconnect_since(since: str) -> list[dict[str, Any]]:
        ws = await client.ws_connect("/ws/notifications", params={"token": token, "since": since})
        frames = [await receive_frame(ws), await receive_frame(ws)]
        await ws.close()
        return frames

    before = await reconnect_since(pruned)
    assert before[1]["type"] == "notification" and before[1]["data"]["notification_id"] == later

    await prune_once(worker_context)

    with pytest.raises(UnknownCursor):
        await repository.list_since("alice", pruned, limit=10)
    after = await reconnect_since(pruned)
    assert after[0]["type"] == "unread_count"
    assert after[1] == {"type": "resync", "data": {}}


# ---------------------------------------------------------------- the worker prunes on its interval


async def start_worker(settings: Settings, **options: Any) -> tuple[EventConsumer, asyncio.Task[None]]:
    worker = EventConsumer(settings, handle_signals=False, poll_delay=0.05, **options)
    return worker, asyncio.create_task(worker.main())


async def stop_worker(worker: EventConsumer, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 10)
    await worker.close()


async def test_a_worker_prunes_every_interval(settings: Settings, db_pool: Any) -> None:
    await seed(db_pool)
    worker, task = await start_worker(with_retention(settings, interval_s=0.2))
    try:
        async def pruned() -> bool:
            return len(await remaining_ids(db_pool)) == 2

        await wait_until_async(pruned, timeout_s=10, what="the worker's first prune")
        loop = worker.prune_loop
        assert loop is not None
        await wait_until(lambda: loop.runs >= 1, timeout_s=10, what="the first prune to finish")
        await add_notification(db_pool, "bob", age_days=120, read_days_ago=100)
        await wait_until(lambda: loop.runs >= 3, timeout_s=10, what="two more prunes")
        assert len(await remaining_ids(db_pool)) == 2
        assert worker.metrics.rows_pruned.labels("read")._value.get() == 2
    finally:
        await stop_worker(worker, task)


async def test_no_prune_at_interval_zero_nor_in_a_burst(settings: Settings, db_pool: Any) -> None:
    worker, task = await start_worker(with_retention(settings, interval_s=0))
    try:
        await asyncio.sleep(0.2)
        assert worker.prune_loop is None
    finally:
        await stop_worker(worker, task)
    burst = EventConsumer(with_retention(settings, interval_s=0.01), burst=True, poll_delay=0, handle_signals=False)
    await burst.main()
    await burst.close()
    assert burst.prune_loop is None


async def test_a_prune_failing_because_postgres_is_away_does_not_end_the_worker(settings: Settings) -> None:
    port = free_port()
    away = with_retention(settings, interval_s=0.05).replace(
        database={"url": "postgresql://postgres@127.0.0.1:1/nowhere"}, worker={"metrics_port": port}
    )
    worker, task = await start_worker(away)
    try:
        await wait_until(lambda: PRUNE_LOOP_NAME in worker.background.down(), timeout_s=10, what="a failed prune")
        assert worker.background.down()[PRUNE_LOOP_NAME] == "OperationalError"
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert response.status == 503
            down = (await response.json())["down"]
            assert down[PRUNE_LOOP_NAME] == "OperationalError"
            assert set(down) <= {PRUNE_LOOP_NAME, DIGEST_LOOP_NAME}  # the digest loop needs Postgres too
        await wait_until(lambda: worker.metrics.loop_restarts.labels(PRUNE_LOOP_NAME)._value.get() >= 2,
                         timeout_s=10, what="the prune to be retried")
        assert not task.done()
    finally:
        await stop_worker(worker, task)


# ---------------------------------------------------------------- notify-server prune


def run_prune(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-m", "notify_server", "prune", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


async def test_prune_command_dry_run_then_prune(python: str, cli_env: dict[str, str], db_pool: Any) -> None:
    seeded = await seed(db_pool)

    dry = await asyncio.to_thread(run_prune, python, cli_env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "would delete read=1 unread=1 archived=0 sessions=2\n"
    assert len(await remaining_ids(db_pool)) == 4

    done = await asyncio.to_thread(run_prune, python, cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "deleted read=1 unread=1 archived=0 sessions=2\n"
    assert await remaining_ids(db_pool) == {seeded.read_recent_of_an_old, seeded.unread_recent}
    assert await counters(db_pool) == {"alice": (1, 6)}


async def test_prune_command_while_another_prune_runs_fails_with_one_line(
    python: str, cli_env: dict[str, str], db_pool: Any
) -> None:
    await seed(db_pool)
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK_KEY,))
        try:
            result = await asyncio.to_thread(run_prune, python, cli_env)
        finally:
            await cur.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))

    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "notify-server: another prune is running (a worker or another `prune`); nothing deleted"
    ]
    assert len(await remaining_ids(db_pool)) == 4


def test_prune_command_without_postgres_fails_with_one_line(python: str, cli_env: dict[str, str]) -> None:
    result = run_prune(python, {**cli_env, "NOTIFY_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"})

    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("notify-server: cannot reach Postgres")


# ---------------------------------------------------------------- configuration


def test_retention_keys_and_their_defaults() -> None:
    retention = load_settings(REPO_ROOT / "config.yaml", environ={}).retention

    assert (retention.read_days, retention.unread_days, retention.sessions_days) == (90, 365, 7)
    assert (retention.interval_s, retention.batch_rows) == (3600, 5000)


@pytest.mark.parametrize(("name", "value"), [("NOTIFY_RETENTION_BATCH_ROWS", "0"),
                                             ("NOTIFY_RETENTION_READ_DAYS", "-1"),
                                             ("NOTIFY_RETENTION_INTERVAL_S", "soon")])
def test_retention_values_out_of_range_are_refused_naming_the_key(name: str, value: str) -> None:
    key = "retention." + name[len("NOTIFY_RETENTION_"):].lower()
    with pytest.raises(ConfigError, match=key):
        load_settings(REPO_ROOT / "config.yaml", environ={name: value})


# ---------------------------------------------------------------- the migration of the indexes


def retention_indexes(url: str) -> dict[str, bool]:
    """{index name: valid} for the indexes of migration 0004."""
    rows = query(url, "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                      " WHERE c.relname = ANY(%s)", (list(RETENTION_INDEXES),))
    return {str(name): bool(valid) for name, valid in rows}


@pytest.fixture
def fresh_database_url(database_url: str) -> Iterator[str]:
    with empty_database(database_url) as url:
        yield url


def test_the_index_migration_applies_on_a_fresh_database(fresh_database_url: str) -> None:
    assert "0004_retention_indexes" in apply_migrations(fresh_database_url)
    assert retention_indexes(fresh_database_url) == dict.fromkeys(RETENTION_INDEXES, True)


def test_the_index_migration_applies_on_a_database_with_rows(fresh_database_url: str) -> None:
    """A database at 0003 holding rows (0004 taken back out), then `migrate` as an upgrade runs it."""
    apply_migrations(fresh_database_url)
    conn = psycopg2.connect(fresh_database_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in RETENTION_INDEXES:
                cur.execute(f"DROP INDEX {name}")
            cur.execute("DELETE FROM _yoyo_migration WHERE migration_id = '0004_retention_indexes'")
            cur.execute(
                "INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, created_at,"
                " read_at) SELECT 'u' || (g % 100), 'e' || g, 'E', 't', 'b', 'LOW', now() - g * interval '1 minute',"
                " CASE WHEN g % 3 = 0 THEN now() END FROM generate_series(1, 20000) AS g"
            )
            cur.execute(
                "INSERT INTO sessions (token_hash, user_id, expires_at, revoked_at) SELECT md5(g::text), 'u',"
                " now() + (g - 500) * interval '1 hour', CASE WHEN g % 7 = 0 THEN now() END"
                " FROM generate_series(1, 1000) AS g"
            )
    finally:
        conn.close()

    assert apply_migrations(fresh_database_url) == ["0004_retention_indexes"]
    assert retention_indexes(fresh_database_url) == dict.fromkeys(RETENTION_INDEXES, True)
    assert query(fresh_database_url, "SELECT count(*) FROM notifications") == [(20000,)]
