"""The inbox at the database (issue 18): the bell's counts, filtered lists and bulk actions on a million
notifications, and migration 0007 on a million rows.

1. Migration: a throw-away database migrated up to 0006 gets `--rows` notifications (60 % read), then
   0007 is applied statement by statement (as yoyo runs a `transactional: false` file), each timed. The
   first statement (the DO block) is the only one that holds the tables' locks.
2. Queries: a database migrated to the end gets `--rows` notifications over `--users` users, `--heavy` of
   them with `--rows / 2 / --heavy` each (10,000 by default) and the rest sharing the other half (about
   50 each), interleaved as arrival over time would leave them; 8 event types, priorities 60 % NORMAL,
   25 % HIGH, 10 % LOW, 5 % URGENT; 60 % read, half of the unread ones seen, 10 % archived; counters
   from the rows; VACUUM ANALYZE (what autovacuum does). Then, through the repository the REST handlers
   call (NotificationRepository: one pooled connection, the SQL production runs), `--samples` calls of
   each kind for heavy users and as many for the others, interleaved: latency p50 / p99 in ms. One
   `EXPLAIN (ANALYZE, BUFFERS)` of each kind, for a heavy user, is printed.
3. Bulk: `--bulk-rounds` rounds, each on another heavy user: read, unread, seen, archive, unarchive, each
   on 1,000 ids of that user that it changes (picked before the round, from different parts of the
   inbox), committed in one statement: latency p50 / p90 / max.

    .venv/bin/python -m bench.inbox [--rows 1000000] [--users 10000] [--heavy 50] [--samples 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2
import sqlparse

from notify_server.core.settings import DatabaseSettings
from notify_server.storage.db import Database
from notify_server.storage.inbox import InboxFilter, counts_sql, page_sql
from notify_server.storage.migrations import MIGRATIONS_DIR
from notify_server.storage.notifications import _COLUMNS, NotificationRepository  # the bench shows the SQL
from tests.services import _with_database, postgres_server, throwaway_database

TYPES = ["CLAIM_REJECTED", "CLAIM_APPROVED", "PAYMENT_FAILED", "PAYMENT_RECEIVED", "COMMENT_ADDED",
         "DOCUMENT_REQUESTED", "APPOINTMENT_REMINDER", "SECURITY_ALERT"]
BULK_IDS = 1000

# Columns of 0002 + the states; `g` runs over the rows in arrival order.
_FILL = """
INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, action_url, metadata,
                           created_at, read_at{extra_columns})
SELECT u, 'e-' || g, (%(types)s::text[])[1 + (hashint4(g) & 2147483647) %% 8], 'Title ' || g,
       'Body of notification ' || g,
       CASE WHEN p < 60 THEN 'NORMAL' WHEN p < 85 THEN 'HIGH' WHEN p < 95 THEN 'LOW' ELSE 'URGENT' END,
       '/x/' || g, '{{}}'::jsonb, now() - make_interval(secs => %(rows)s - g),
       CASE WHEN r < 60 THEN now() - make_interval(secs => (%(rows)s - g) / 2) END{extra_values}
  FROM (SELECT g,
               CASE WHEN g %% 2 = 0 THEN 'heavy-' || ((g / 2) %% %(heavy)s)
                    ELSE 'user-' || ((g / 2) %% %(light)s) END AS u,
               (hashint4(g * 7) & 2147483647) %% 100 AS p,
               (hashint4(g * 11) & 2147483647) %% 100 AS r,
               (hashint4(g * 13) & 2147483647) %% 100 AS s,
               (hashint4(g * 17) & 2147483647) %% 100 AS a
          FROM generate_series(1, %(rows)s) AS g) AS rows
"""
_STATES = (", seen_at, archived_at",
           ", CASE WHEN r >= 60 AND s < 50 THEN now() - make_interval(secs => (%(rows)s - g) / 3) END"
           ", CASE WHEN a < 10 THEN now() - make_interval(secs => (%(rows)s - g) / 4) END")
_COUNTERS = {
    False: "INSERT INTO unread_counters (user_id, unread, version)"
           " SELECT recipient_id, count(*) FILTER (WHERE read_at IS NULL), 1 FROM notifications GROUP BY 1",
    True: "INSERT INTO unread_counters (user_id, unread, unseen, version)"
          " SELECT recipient_id, count(*) FILTER (WHERE read_at IS NULL AND archived_at IS NULL),"
          " count(*) FILTER (WHERE seen_at IS NULL AND read_at IS NULL AND archived_at IS NULL), 1"
          " FROM notifications GROUP BY 1",
}


def fill(url: str, args: argparse.Namespace, *, states: bool) -> float:
    started = time.perf_counter()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        extra_columns, extra_values = _STATES if states else ("", "")
        cur.execute(_FILL.format(extra_columns=extra_columns, extra_values=extra_values),
                    {"types": TYPES, "rows": args.rows, "heavy": args.heavy, "light": args.users - args.heavy})
        cur.execute(_COUNTERS[states])
        cur.execute("VACUUM ANALYZE notifications")
        cur.execute("VACUUM ANALYZE unread_counters")
    conn.close()
    return time.perf_counter() - started


# ---------------------------------------------------------------- 1. migration 0007 on a million rows


def migration(server: str, args: argparse.Namespace) -> list[tuple[str, float]]:
    name = f"notify_bench_{random.randrange(1 << 30):x}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server, name)
    try:
        from yoyo import get_backend, read_migrations

        backend = get_backend(url)
        before = read_migrations(str(MIGRATIONS_DIR)).filter(lambda m: m.id < "0007")
        with backend.lock():
            backend.apply_migrations(backend.to_apply(before))
        backend.connection.close()
        print(f"migration: {args.rows:,} rows at 0006 in {fill(url, args, states=False):.1f} s")
        text = (MIGRATIONS_DIR / "0007_inbox.sql").read_text()
        timings = []
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in sqlparse.split(text):
                body = sqlparse.format(statement, strip_comments=True).strip()
                if not body:
                    continue
                started = time.perf_counter()
                cur.execute(body)
                timings.append((" ".join(body.split())[:70], time.perf_counter() - started))
        conn.close()
        return timings
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# ---------------------------------------------------------------- 2. and 3. queries and bulk actions


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def sample(
    call: Callable[[str], Awaitable[Any]], users: list[str], count: int, rng: random.Random
) -> list[float]:
    times = []
    for _ in range(count):
        user = rng.choice(users)
        started = time.perf_counter()
        await call(user)
        times.append((time.perf_counter() - started) * 1000)
    return times


def explain(url: str, sql: str, params: dict[str, Any]) -> str:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
            return "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()


async def queries(url: str, args: argparse.Namespace) -> dict[str, Any]:
    db = Database(DatabaseSettings(url=url, pool_min_size=1, pool_max_size=1))
    repo = NotificationRepository(db)
    heavy = [f"heavy-{i}" for i in range(args.heavy)]
    light = [f"user-{i}" for i in range(args.users - args.heavy)]
    rng = random.Random(18)
    rare = InboxFilter(event_types=("SECURITY_ALERT",), priorities=("URGENT",))
    kinds: dict[str, Callable[[str], Awaitable[Any]]] = {
        "counts": lambda u: repo.counts(u),
        "counts ?event_type=A,B": lambda u: repo.counts(u, event_types=("SECURITY_ALERT", "PAYMENT_FAILED")),
        "counts ?priority=URGENT": lambda u: repo.counts(u, priorities=("URGENT",)),
        "list (inbox)": lambda u: repo.list_for_user(u, limit=20),
        "list ?read=false": lambda u: repo.list_for_user(u, limit=20, inbox=InboxFilter(read=False)),
        "list ?archived=true": lambda u: repo.list_for_user(u, limit=20, inbox=InboxFilter(archived=True)),
        "list ?event_type=A&priority=URGENT": lambda u: repo.list_for_user(u, limit=20, inbox=rare),
        "unread_state (badge on connect)": lambda u: repo.unread_states([u]),
    }
    results: dict[str, Any] = {}
    try:
        for name, call in kinds.items():
            await sample(call, heavy + light, 50, rng)  # warm
            times = {"heavy": [], "light": []}
            for _ in range(args.samples // 50):
                times["heavy"] += await sample(call, heavy, 50, rng)
                times["light"] += await sample(call, light, 50, rng)
            results[name] = {group: {"p50": statistics.median(v), "p99": percentile(v, 0.99)}
                             for group, v in times.items()}
        plans = _plans(url, heavy[0])
        results["bulk"] = await bulk(db, repo, heavy, args)
        # Right after the bulk actions the heavy users' pages are not all-visible (until autovacuum runs):
        # their counts visit the table for each changed row.
        touched = heavy[: min(len(heavy), args.bulk_rounds)]  # each had 5,000 rows changed just now
        after = await sample(kinds["counts"], touched, args.samples // 10, rng)
        _vacuum(url)
        vacuumed = await sample(kinds["counts"], touched, args.samples // 10, rng)
        results["counts after bulk actions"] = {
            "before vacuum": {"p50": statistics.median(after), "p99": percentile(after, 0.99)},
            "after vacuum": {"p50": statistics.median(vacuumed), "p99": percentile(vacuumed, 0.99)},
        }
    finally:
        await db.close()
    results["plans"] = plans
    return results


def _vacuum(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM notifications")
    conn.close()


def _plans(url: str, heavy_user: str) -> dict[str, str]:
    user = {"user": heavy_user, "limit": 21}
    rare = InboxFilter(event_types=("SECURITY_ALERT",), priorities=("URGENT",))
    plans = {"counts": counts_sql((), ()),
             "counts ?event_type=A,B": counts_sql(("SECURITY_ALERT", "PAYMENT_FAILED"), ())}
    for name, inbox in (("list (inbox)", InboxFilter()), ("list ?read=false", InboxFilter(read=False)),
                        ("list ?archived=true", InboxFilter(archived=True)),
                        ("list ?event_type=A&priority=URGENT", rare)):
        clauses, params = inbox.clauses()
        plans[name] = (page_sql(_COLUMNS, clauses), params)
    return {name: explain(url, sql, {**user, **params}) for name, (sql, params) in plans.items()}


# Which 1,000 ids of a heavy user each action gets: ones it changes (the worst case: every row changes),
# taken before the round starts, from different parts of the user's inbox.
_BULK_PICKS = {
    "read": "read_at IS NULL AND archived_at IS NULL ORDER BY seq DESC",
    "unread": "read_at IS NOT NULL AND archived_at IS NULL ORDER BY seq DESC",
    "seen": "seen_at IS NULL AND read_at IS NULL AND archived_at IS NULL ORDER BY seq ASC",
    "archive": "archived_at IS NULL AND read_at IS NOT NULL ORDER BY seq ASC",
    "unarchive": "archived_at IS NOT NULL ORDER BY seq DESC",
}


async def bulk(
    db: Database, repo: NotificationRepository, heavy: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in _BULK_PICKS}
    changed_rows: dict[str, list[int]] = {name: [] for name in _BULK_PICKS}
    for round_ in range(args.bulk_rounds):
        user = heavy[round_ % len(heavy)]
        picks: dict[str, list[str]] = {}
        async with db.connection() as conn, conn.cursor() as cur:
            for action, where in _BULK_PICKS.items():
                await cur.execute(f"SELECT notification_id::text FROM notifications WHERE recipient_id = %s"
                                  f" AND {where} LIMIT %s", (user, BULK_IDS))
                picks[action] = [row[0] for row in await cur.fetchall()]
        for action, ids in picks.items():
            started = time.perf_counter()
            changed = await repo.change(user, action, ids=ids)
            times[action].append((time.perf_counter() - started) * 1000)
            changed_rows[action].append(len(changed.notification_ids))
    every = [t for values in times.values() for t in values]
    summary: dict[str, Any] = {
        action: {"p50": statistics.median(v), "p90": percentile(v, 0.9), "max": max(v),
                 "rows changed (median)": statistics.median(changed_rows[action])}
        for action, v in times.items()}
    summary["all"] = {"p50": statistics.median(every), "p90": percentile(every, 0.9), "max": max(every),
                      "rows changed (median)": statistics.median([n for v in changed_rows.values() for n in v])}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--heavy", type=int, default=50)
    parser.add_argument("--samples", type=int, default=1000, help="calls of each kind per group")
    parser.add_argument("--bulk-rounds", type=int, default=25)
    parser.add_argument("--skip-migration", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    report: dict[str, Any] = {"args": vars(args)}
    with postgres_server() as server:
        if not args.skip_migration:
            timings = migration(server, args)
            report["migration"] = timings
            print(f"migration 0007: {sum(t for _, t in timings):.2f} s in all")
            for statement, seconds in timings:
                print(f"  {seconds:7.3f} s  {statement}")
        with throwaway_database(server) as url:
            print(f"queries: {args.rows:,} rows in {fill(url, args, states=True):.1f} s")
            found = asyncio.run(queries(url, args))
    report.update(found)
    print(f"\n{'call (at the database)':<40} {'heavy p50':>9} {'p99':>7}   {'others p50':>10} {'p99':>7}  ms")
    for name, groups in found.items():
        if name in ("bulk", "plans", "counts after bulk actions"):
            continue
        h, o = groups["heavy"], groups["light"]
        print(f"{name:<40} {h['p50']:9.2f} {h['p99']:7.2f}   {o['p50']:10.2f} {o['p99']:7.2f}")
    print(f"\nbulk action on {BULK_IDS:,} ids, one statement (ms):")
    for action, figures in found["bulk"].items():
        print(f"  {action:<10} p50 {figures['p50']:6.1f}  p90 {figures['p90']:6.1f}  max {figures['max']:6.1f}"
              f"  (rows changed: {figures['rows changed (median)']:.0f})")
    for state, figures in found["counts after bulk actions"].items():
        print(f"counts of the users just acted on, {state}: p50 {figures['p50']:.2f} p99 {figures['p99']:.2f} ms")
    for name, plan in found["plans"].items():
        print(f"\nEXPLAIN {name} (a heavy user):\n{plan}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1, default=str)


if __name__ == "__main__":
    main()
