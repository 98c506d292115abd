"""How a batch of events is stored: the database function (migrations 0005 and 0006, one round trip)
against the five statements it replaced (BEGIN, look-up, counter bump, insert, COMMIT), in one run.

A throw-away database on the local Postgres, one connection, batches of B events of R recipients each
(users drawn from a pool so counters are updated, not only inserted). The two ways alternate batch by
batch, so the machine's other load falls on both alike. For each way: wall time per batch (median and
p90) and the Postgres backend's CPU per stored row (utime + stime of the backend process, from /proc).

`--prefill N` stores N rows (and ANALYZEs) before the first batch; without it the table grows from
empty during the run, as in a new deployment — the case that found the stale plans fixed by 0006.

`--against 0006`: the store of this version (notify_store_events_v2 on the schema of migration 0007: the
`unseen` counter, the inbox's indexes) against the store before 0007 (notify_store_events on a database
migrated up to 0006), two databases side by side, batches alternating between them.

    .venv/bin/python -m bench.store_path [--batches 300] [--sizes 1x1,10x1,50x1,1x100] [--prefill N]
                                         [--against statements|0006]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import orjson
import psycopg2

from notify_server.core.settings import DatabaseSettings
from notify_server.storage.db import Database
from notify_server.storage.migrations import MIGRATIONS_DIR
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient
from tests.services import _with_database, postgres_server, throwaway_database

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
USERS = 2_000


def _backend_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def store_with_statements(db: Database, events: Sequence[NewNotifications]) -> int:
    """The store of commit 4f9f1ff^ (five round trips), kept here only as the other side of the A/B."""
    by_id = {new.event_id: new for new in events}
    event_ids = list(by_id)
    position = {event_id: i for i, event_id in enumerate(event_ids, start=1)}
    async with db.connection() as conn, conn.cursor() as cur:
        async with cur.begin():
            await cur.execute("SELECT event_id, recipient_id FROM notifications WHERE event_id = ANY(%s)",
                              (event_ids,))
            existing = {(row[0], row[1]) for row in await cur.fetchall()}
            pairs = [(new.event_id, r.user_id, r.email) for new in events for r in new.recipients
                     if (new.event_id, r.user_id) not in existing]
            expected: dict[str, int] = {}
            for _, user_id, _ in pairs:
                expected[user_id] = expected.get(user_id, 0) + 1
            users = sorted(expected)
            await cur.execute(
                "INSERT INTO unread_counters AS c (user_id, unread, version)"
                " SELECT d.u, d.n, 1 FROM unnest(%s::text[], %s::int[]) AS d(u, n) ORDER BY d.u"
                " ON CONFLICT (user_id) DO UPDATE"
                " SET unread = GREATEST(c.unread + EXCLUDED.unread, 0), version = c.version + 1"
                " RETURNING user_id, unread, version",
                (users, [expected[u] for u in users]),
            )
            await cur.fetchall()
            await cur.execute(
                "INSERT INTO notifications (recipient_id, recipient_email, event_id, event_type,"
                " title, body, priority, action_url, metadata)"
                " SELECT r.id, r.email, e.event_id, e.event_type, e.title, e.body, e.priority,"
                " e.action_url, e.metadata::jsonb"
                " FROM unnest(%(ids)s::text[], %(emails)s::text[], %(ev)s::int[])"
                "   WITH ORDINALITY AS r(id, email, ev, ord)"
                " JOIN unnest(%(event_ids)s::text[], %(types)s::text[], %(titles)s::text[], %(bodies)s::text[],"
                "   %(priorities)s::text[], %(urls)s::text[], %(metadata)s::text[])"
                "   WITH ORDINALITY AS e(event_id, event_type, title, body, priority, action_url, metadata, ev)"
                "   USING (ev)"
                " ORDER BY r.ord"
                " ON CONFLICT (event_id, recipient_id) DO NOTHING"
                " RETURNING seq, notification_id, event_id, recipient_id, recipient_email, created_at",
                {
                    "ids": [user_id for _, user_id, _ in pairs],
                    "emails": [email for _, _, email in pairs],
                    "ev": [position[event_id] for event_id, _, _ in pairs],
                    "event_ids": event_ids,
                    "types": [by_id[e].event_type for e in event_ids],
                    "titles": [by_id[e].title for e in event_ids],
                    "bodies": [by_id[e].body for e in event_ids],
                    "priorities": [by_id[e].priority for e in event_ids],
                    "urls": [by_id[e].action_url for e in event_ids],
                    "metadata": [orjson.dumps(by_id[e].metadata).decode() for e in event_ids],
                },
            )
            return len(await cur.fetchall())


def _batch(events: int, recipients: int, rng: random.Random) -> list[NewNotifications]:
    return [
        NewNotifications(
            event_id=str(uuid.uuid4()), event_type="claim.rejected", title="Your claim was rejected",
            body="Claim 1234 was rejected: the receipt is missing.", priority="NORMAL",
            action_url="https://example.test/claims/1234", metadata={"claim_id": 1234},
            recipients=[Recipient(f"user-{u}", f"user-{u}@example.test")
                        for u in rng.sample(range(USERS), recipients)],
        )
        for _ in range(events)
    ]


StoreWay = Callable[[Sequence[NewNotifications]], Awaitable[Any]]


async def _backend_pid(db: Database) -> int:
    async with db.connection() as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_backend_pid()")
        (backend,) = await cur.fetchone()
    return int(backend)


async def _measure(
    ways: dict[str, tuple[Database, StoreWay]], events: int, recipients: int, batches: int,
) -> dict[str, dict[str, float]]:
    backends = {name: await _backend_pid(db) for name, (db, _) in ways.items()}
    rng = random.Random(7)
    walls: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, float] = dict.fromkeys(ways, 0.0)
    for _ in range(batches):
        for name, (_, store) in ways.items():
            batch = _batch(events, recipients, rng)
            cpu_before = _backend_cpu_s(backends[name])
            started = time.perf_counter()
            await store(batch)
            walls[name].append(time.perf_counter() - started)
            cpu[name] += _backend_cpu_s(backends[name]) - cpu_before
    rows = events * recipients * batches
    return {
        name: {
            "wall_ms_p50": statistics.median(walls[name]) * 1e3,
            "wall_ms_p90": statistics.quantiles(walls[name], n=10)[-1] * 1e3,
            "pg_cpu_us_per_row": cpu[name] / rows * 1e6,
        }
        for name in ways
    }


async def store_before_0007(db: Database, events: Sequence[NewNotifications]) -> int:
    """notify_store_events as the worker called it before migration 0007 (the same arguments)."""
    by_id = {new.event_id: new for new in events}
    event_ids = list(by_id)
    position = {event_id: i for i, event_id in enumerate(event_ids, start=1)}
    recipients = [(new.event_id, r) for new in by_id.values() for r in new.recipients]
    async with db.connection() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT * FROM notify_store_events(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::text[], %s::text[], %s::int[])",
            (event_ids, [by_id[e].event_type for e in event_ids], [by_id[e].title for e in event_ids],
             [by_id[e].body for e in event_ids], [by_id[e].priority for e in event_ids],
             [by_id[e].action_url for e in event_ids], [orjson.dumps(by_id[e].metadata).decode() for e in event_ids],
             [r.user_id for _, r in recipients], [r.email for _, r in recipients],
             [position[event_id] for event_id, _ in recipients]),
        )
        return len(await cur.fetchall())


def _prefill(url: str, rows: int) -> None:
    """Rows (and counters) stored before the first batch; a plain connection: this takes longer than the
    service's statement timeout."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, metadata)"
            " SELECT 'user-' || (g %% %s), 'prefill-' || g, 'x', 'x', 'x', 'NORMAL', '{}'"
            " FROM generate_series(1, %s) AS g", (USERS, rows))
        cur.execute("INSERT INTO unread_counters (user_id, unread, version)"
                    " SELECT recipient_id, count(*), 1 FROM notifications GROUP BY 1")
        cur.execute("VACUUM ANALYZE notifications")
    conn.close()


@contextlib.contextmanager
def _database_at_0006(server: str) -> Iterator[str]:
    """A throw-away database migrated up to 0006 (the schema before the inbox)."""
    from yoyo import get_backend, read_migrations

    name = f"notify_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        url = _with_database(server, name)
        backend = get_backend(url)
        with backend.lock():
            backend.apply_migrations(backend.to_apply(read_migrations(str(MIGRATIONS_DIR)).filter(
                lambda m: m.id < "0007")))
        backend.connection.close()
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


async def main_async(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        url = stack.enter_context(throwaway_database(server))
        db = Database(DatabaseSettings(url=url, pool_min_size=1, pool_max_size=1))
        repo = NotificationRepository(db)
        urls = {db: url}
        if args.plan_cache_mode != "force_custom_plan":  # migration 0006's setting, undone to compare
            async with db.connection() as conn, conn.cursor() as cur:
                await cur.execute(f"ALTER FUNCTION notify_store_events_v2 SET plan_cache_mode = {args.plan_cache_mode}")
        if args.autovacuum == "default":  # 0007 vacuums this table after 2 % of it changed; undone to compare
            async with db.connection() as conn, conn.cursor() as cur:
                await cur.execute("ALTER TABLE notifications RESET (autovacuum_vacuum_scale_factor,"
                                  " autovacuum_vacuum_insert_scale_factor)")
        ways: dict[str, tuple[Database, StoreWay]] = {"function (0007)": (db, repo.store_events)}
        if args.against == "0006":
            old_url = stack.enter_context(_database_at_0006(server))
            old = Database(DatabaseSettings(url=old_url, pool_min_size=1, pool_max_size=1))
            urls[old] = old_url
            ways["function (0006)"] = (old, lambda batch: store_before_0007(old, batch))
        else:
            ways["five statements"] = (db, lambda batch: store_with_statements(db, batch))
        try:
            if args.prefill:
                for each_url in urls.values():
                    _prefill(each_url, args.prefill)
            await _measure(ways, 10, 1, 50)  # warm-up: plans cached, tables touched
            print(f"{'batch':>12} {'way':<16} {'p50 ms':>8} {'p90 ms':>8} {'PG CPU µs/row':>14}")
            for size in args.sizes.split(","):
                events, recipients = (int(part) for part in size.split("x"))
                result = await _measure(ways, events, recipients, args.batches)
                for name, figures in result.items():
                    print(f"{size:>12} {name:<16} {figures['wall_ms_p50']:8.2f} {figures['wall_ms_p90']:8.2f}"
                          f" {figures['pg_cpu_us_per_row']:14.0f}")
        finally:
            for each in urls:
                await each.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--plan-cache-mode", default="force_custom_plan", choices=["force_custom_plan", "auto"],
                        help="the store function's plan_cache_mode (auto = before migration 0006)")
    parser.add_argument("--prefill", type=int, default=0, help="rows stored before the first batch")
    parser.add_argument("--sizes", default="1x1,10x1,50x1,1x100,1x2000",
                        help="EVENTSxRECIPIENTS per batch, comma-separated")
    parser.add_argument("--autovacuum", default="0007", choices=["0007", "default"],
                        help="the notifications table's autovacuum scale factors: 0007's (2 %%) or Postgres's (20 %%)")
    parser.add_argument("--against", default="statements", choices=["statements", "0006"],
                        help="the other side: the five statements, or the store function before migration 0007")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
