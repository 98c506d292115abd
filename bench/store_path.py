"""How a batch of events is stored: the database function (migrations 0005 and 0006, one round trip)
against the five statements it replaced (BEGIN, look-up, counter bump, insert, COMMIT), in one run.

A throw-away database on the local Postgres, one connection, batches of B events of R recipients each
(users drawn from a pool so counters are updated, not only inserted). The two ways alternate batch by
batch, so the machine's other load falls on both alike. For each way: wall time per batch (median and
p90) and the Postgres backend's CPU per stored row (utime + stime of the backend process, from /proc).

`--prefill N` stores N rows (and ANALYZEs) before the first batch; without it the table grows from
empty during the run, as in a new deployment — the case that found the stale plans fixed by 0006.

    .venv/bin/python -m bench.store_path [--batches 300] [--sizes 1x1,10x1,50x1,1x100] [--prefill N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from notify_server.core.settings import DatabaseSettings
from notify_server.storage.db import Database
from notify_server.storage.notifications import NewNotifications, NotificationRepository, Recipient
from tests.services import postgres_server, throwaway_database

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


async def _measure(
    db: Database, ways: dict[str, Callable[[Sequence[NewNotifications]], Awaitable[Any]]],
    events: int, recipients: int, batches: int,
) -> dict[str, dict[str, float]]:
    async with db.connection() as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_backend_pid()")
        (backend,) = await cur.fetchone()
    rng = random.Random(7)
    walls: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, float] = dict.fromkeys(ways, 0.0)
    for _ in range(batches):
        for name, store in ways.items():
            batch = _batch(events, recipients, rng)
            cpu_before = _backend_cpu_s(backend)
            started = time.perf_counter()
            await store(batch)
            walls[name].append(time.perf_counter() - started)
            cpu[name] += _backend_cpu_s(backend) - cpu_before
    rows = events * recipients * batches
    return {
        name: {
            "wall_ms_p50": statistics.median(walls[name]) * 1e3,
            "wall_ms_p90": statistics.quantiles(walls[name], n=10)[-1] * 1e3,
            "pg_cpu_us_per_row": cpu[name] / rows * 1e6,
        }
        for name in ways
    }


async def main_async(args: argparse.Namespace) -> None:
    with postgres_server() as server, throwaway_database(server) as url:
        db = Database(DatabaseSettings(url=url, pool_min_size=1, pool_max_size=1))
        repo = NotificationRepository(db)
        if args.plan_cache_mode != "force_custom_plan":  # migration 0006's setting, undone to compare
            async with db.connection() as conn, conn.cursor() as cur:
                await cur.execute(f"ALTER FUNCTION notify_store_events SET plan_cache_mode = {args.plan_cache_mode}")
        if args.prefill:
            async with db.connection() as conn, conn.cursor() as cur:
                await cur.execute(
                    "INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, metadata)"
                    " SELECT 'user-' || (g %% %s), 'prefill-' || g, 'x', 'x', 'x', 'NORMAL', '{}'"
                    " FROM generate_series(1, %s) AS g", (USERS, args.prefill))
                await cur.execute("ANALYZE notifications")
        ways: dict[str, Callable[[Sequence[NewNotifications]], Awaitable[Any]]] = {
            "function (0006)": repo.store_events,
            "five statements": lambda batch: store_with_statements(db, batch),
        }
        try:
            await _measure(db, ways, 10, 1, 50)  # warm-up: plans cached, tables touched
            print(f"{'batch':>12} {'way':<16} {'p50 ms':>8} {'p90 ms':>8} {'PG CPU µs/row':>14}")
            for size in args.sizes.split(","):
                events, recipients = (int(part) for part in size.split("x"))
                result = await _measure(db, ways, events, recipients, args.batches)
                for name, figures in result.items():
                    print(f"{size:>12} {name:<16} {figures['wall_ms_p50']:8.2f} {figures['wall_ms_p90']:8.2f}"
                          f" {figures['pg_cpu_us_per_row']:14.0f}")
        finally:
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--plan-cache-mode", default="force_custom_plan", choices=["force_custom_plan", "auto"],
                        help="the store function's plan_cache_mode (auto = before migration 0006)")
    parser.add_argument("--prefill", type=int, default=0, help="rows stored before the first batch")
    parser.add_argument("--sizes", default="1x1,10x1,50x1,1x100,1x2000",
                        help="EVENTSxRECIPIENTS per batch, comma-separated")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
