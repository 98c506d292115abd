"""Pruning a million rows while events flow (issue 13): rows deleted per second, and the delivery latency
during the prune beside the latency without it.

Each run, in a throw-away database and Redis db:
1. seeds `--rows` notifications directly in SQL, every one due for deletion under the default retention
   (by default 70 % read 100+ days ago, 30 % unread and 400+ days old (`--unread-pct`), over 20,000
   users whose counters match),
   with the indexes of migration 0004 taken out; then times `migrate` building them (CREATE INDEX
   CONCURRENTLY on the full table) and runs VACUUM ANALYZE, as autovacuum would have;
2. starts one node and one worker (`notify-server serve` / `worker`), opens one WebSocket per live user
   (`--users`, whose old rows are among the seeded ones, so their counts fall during the prune), and
   sends `--rate` events/s through `notify_server.ingest.producer.enqueue_event`, each to one live user; the
   clock runs from just before the enqueue to the frame read by the tab;
3. baseline: `--baseline-s` of events with no prune (the first 2 s not counted);
4. prune: the worker is restarted with `retention.interval_s` set, so its own periodic prune starts ten
   seconds later (as in production: in the worker process, beside the event consumer), and events flow
   until it ends; its start and end are read from the advisory lock it holds (pg_locks, every 50 ms).
   Latencies of events sent while the prune ran are "during the prune".

    .venv/bin/python -m bench.prune [--runs 3] [--rows 1000000] [--rate 500] [--users 100]

Prints a markdown table (medians of the runs) and the machine's other load (CPU of every process that is
not part of the run, from /proc, and the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import psycopg2
from redis.asyncio import Redis

from bench.procstats import CpuMeter, cpu_seconds, redis_pids
from bench.stack import Processes, env_for, percentile, stores
from notify_server.core.settings import DatabaseSettings
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.db import Database
from notify_server.storage.migrations import apply_migrations
from notify_server.storage.retention import _WALKS, PRUNE_LOCK_KEY, _batch_sql  # the bench peeks at the statements
from notify_server.storage.sessions import SessionStore
from tests.processes import free_port, wait_http_ok

SEED_USERS = 20_000
WARM_UP_S = 2.0
# The pruning worker's retention.interval_s: its first prune comes that long after it starts, once the new
# process is warm (its first seconds of events are slower with or without a prune; not counted).
FIRST_PRUNE_AFTER_S = 10.0
LOCK_POLL_S = 0.05
DRAIN_S = 10.0
RETENTION_INDEXES = ("notifications_read_at", "notifications_unread_recipient_created", "sessions_expires_at",
                     "sessions_revoked_at")

SEED_SQL = """
INSERT INTO notifications (recipient_id, event_id, event_type, title, body, priority, action_url, created_at,
                           read_at)
SELECT 'user-' || (g %% %(users)s), 'seed-' || g, 'CLAIM_REJECTED', 'Claim Rejected',
       'Your claim for Dr. Smith has been rejected.', 'HIGH', '/claims/' || g,
       now() - interval '400 days' - g * interval '10 seconds',
       CASE WHEN g %% 100 >= %(unread_pct)s THEN now() - interval '100 days' - g * interval '5 seconds' END
FROM generate_series(1, %(rows)s) AS g;
INSERT INTO unread_counters (user_id, unread, version)
SELECT recipient_id, count(*) FILTER (WHERE read_at IS NULL), 1 FROM notifications GROUP BY recipient_id
ON CONFLICT (user_id) DO UPDATE SET unread = EXCLUDED.unread;
"""


def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def seed(url: str, rows: int, unread_pct: int) -> float:
    """The rows, with 0004's indexes out; then `migrate` builds them. Returns the build's seconds."""
    for name in RETENTION_INDEXES:
        sql(url, f"DROP INDEX IF EXISTS {name}")
    sql(url, "DELETE FROM _yoyo_migration WHERE migration_id = '0004_retention_indexes'")
    sql(url, SEED_SQL, {"rows": rows, "users": SEED_USERS, "unread_pct": unread_pct})
    sql(url, "CHECKPOINT")
    started = time.monotonic()
    applied = apply_migrations(url)
    build_s = time.monotonic() - started
    if applied != ["0004_retention_indexes"]:
        raise RuntimeError(f"expected to apply 0004 alone, applied {applied}")
    sql(url, "VACUUM ANALYZE notifications")
    sql(url, "VACUUM ANALYZE unread_counters")
    return build_s


def plans(url: str) -> list[str]:
    """EXPLAIN of the first read batch and the first unread batch on the seeded table."""
    out = []
    for walk in _WALKS[:2]:
        cutoff = "now() - interval '90 days'" if walk.kind == "read" else "now() - interval '365 days'"
        statement = _batch_sql(walk, resume=False).replace("%(cutoff)s", cutoff).replace("%(limit)s", "5000")
        rows = sql(url, "EXPLAIN " + statement)
        out.append(f"-- {walk.kind}\n" + "\n".join(str(r[0]) for r in rows))
    return out


class LockProbe:
    """Whether a prune holds its advisory lock now (pg_locks), over one kept connection."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg2.connect(url)
        self._conn.autocommit = True

    def held(self) -> bool:
        key = PRUNE_LOCK_KEY
        with self._conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
                        " AND objsubid = 1 AND granted", ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
            return cur.fetchone() is not None

    def vacuuming(self) -> bool:
        """Whether autovacuum is working on notifications now (the dead rows of a prune call it in)."""
        with self._conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_stat_progress_vacuum WHERE datname = current_database()"
                        " AND relid = 'notifications'::regclass")
            return cur.fetchone() is not None

    def close(self) -> None:
        self._conn.close()


def other_processes(before: dict[int, tuple[str, float]], wall_s: float, ours: set[int]) -> list[str]:
    """The busiest processes that are not part of the run, as `name pid: % of a core`."""
    after = all_cpu()
    used = []
    for pid, (name, seconds) in after.items():
        if pid in ours or pid not in before:
            continue
        delta = seconds - before[pid][1]
        if delta > 0.01 * wall_s:
            used.append((delta / wall_s * 100, f"{name} {pid}"))
    return [f"{who}: {pct:.0f}%" for pct, who in sorted(used, reverse=True)[:6]]


def all_cpu() -> dict[int, tuple[str, float]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            found[int(entry)] = (name, cpu_seconds(int(entry)))
    return found


class Flow:
    """Tabs of the live users and a paced stream of events to them; latencies by phase."""

    def __init__(self, redis: Redis, users: list[str], rate: float) -> None:
        self.redis = redis
        self.users = users
        self.rate = rate
        self.sent: dict[str, tuple[float, str]] = {}  # event id -> (sent at, phase)
        self.latency_ms: dict[str, float] = {}
        self.count_frames = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = orjson.loads(message.data)
            if frame["type"] == "notification":
                meta = frame["data"]["metadata"]
                self.latency_ms[meta["event"]] = (time.time() - meta["sent_at"]) * 1000
            elif frame["type"] == "unread_count":
                self.count_frames += 1

    async def _send(self, event_id: str, user: str, phase: str) -> None:
        sent_at = time.time()
        self.sent[event_id] = (sent_at, phase)
        await enqueue_event(self.redis, {
            "event_id": event_id, "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": user}],
            "data": {"provider_name": "Dr. Smith", "claim_id": event_id},
            "metadata": {"sent_at": sent_at, "event": event_id},
        })

    async def run(self, label: str, phase_of: Callable[[float], str], until: Callable[[], bool]) -> None:
        """Send `rate` events a second (each enqueue its own task, so a slow one does not hold the pace)
        until `until()`; `phase_of(seconds since start)` labels each event."""
        start = time.perf_counter()
        i = 0
        while not until():
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._send(f"{label}-{i}", random.choice(self.users),
                                                  phase_of(time.perf_counter() - start)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            i += 1
        await asyncio.gather(*self._tasks)

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and len(self.latency_ms) < len(self.sent):
            await asyncio.sleep(0.1)

    def timeline(self, since: float, bucket_s: float = 0.25) -> list[tuple[float, float]]:
        """(seconds after `since` (wall clock), worst latency in ms of the events sent in that bucket)."""
        worst: dict[int, float] = {}
        for event_id, (sent_at, _) in self.sent.items():
            if event_id in self.latency_ms and sent_at >= since - 5:
                slot = int((sent_at - since) // bucket_s)
                worst[slot] = max(worst.get(slot, 0.0), self.latency_ms[event_id])
        return [(slot * bucket_s, ms) for slot, ms in sorted(worst.items())]

    def stats(self, phase: str) -> dict[str, Any]:
        ids = [e for e, (_, p) in self.sent.items() if p == phase]
        values = [self.latency_ms[e] for e in ids if e in self.latency_ms]
        return {"events": len(ids), "lost": len(ids) - len(values),
                "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                "max_ms": max(values) if values else float("nan")}


async def one_run(run: int, args: argparse.Namespace) -> dict[str, Any]:
    with stores() as (database_url, redis_url):
        print(f"run {run}: seeding {args.rows:,} rows …", file=sys.stderr, flush=True)
        build_s = seed(database_url, args.rows, args.unread_pct)
        if run == 1 and args.plans:
            for plan in plans(database_url):
                print(plan, file=sys.stderr)
        due = sql(database_url, "SELECT count(*) FROM notifications")[0][0]
        port = free_port()
        env = env_for(database_url, redis_url, NOTIFY_RETENTION_INTERVAL_S="0",
                      NOTIFY_RETENTION_BATCH_ROWS=str(args.batch_rows))
        with Processes() as children:
            node = children.start("node", ["serve", "--port", str(port)], env)
            worker = children.start("worker", ["worker"], env)
            await wait_http_ok(f"http://127.0.0.1:{port}/readyz", node)
            db = Database(DatabaseSettings(url=database_url, pool_min_size=1, pool_max_size=2))
            users = [f"user-{n}" for n in range(args.users)]
            tokens = [(await SessionStore(db).create(user, 3600)).token for user in users]
            await db.close()
            redis = Redis.from_url(redis_url)
            flow = Flow(redis, users, args.rate)
            async with aiohttp.ClientSession() as http:
                tabs = [await http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications", params={"token": t})
                        for t in tokens]
                readers = [asyncio.create_task(flow.read(tab)) for tab in tabs]
                own = {os.getpid(), node.popen.pid, worker.popen.pid}

                # Baseline: no prune.
                others_before = all_cpu()
                meter = CpuMeter({"node": [node.popen.pid], "worker": [worker.popen.pid],
                                  "bench": [os.getpid()], "redis": redis_pids()}).start()
                started = time.monotonic()
                await flow.run(f"base{run}", lambda t: "warm-up" if t < WARM_UP_S else "baseline",
                               lambda: time.monotonic() - started > args.baseline_s)
                await flow.drain()
                base_cpu = meter.stop()
                base_others = other_processes(others_before, meter.wall_s, own)
                base_load = os.getloadavg()

                # The worker again, now pruning: its first prune comes FIRST_PRUNE_AFTER_S after it starts.
                worker.stop()
                metrics_port = free_port()
                worker = children.start("pruning-worker", ["worker"], dict(
                    env, NOTIFY_RETENTION_INTERVAL_S=str(FIRST_PRUNE_AFTER_S),
                    NOTIFY_WORKER_METRICS_PORT=str(metrics_port)))
                await wait_http_ok(f"http://127.0.0.1:{metrics_port}/readyz", worker)
                own.add(worker.popen.pid)
                window: dict[str, float] = {}
                loop = asyncio.get_running_loop()
                probe = LockProbe(database_url)

                async def watch_lock() -> None:
                    while True:
                        held = await loop.run_in_executor(None, probe.held)
                        vacuum = await loop.run_in_executor(None, probe.vacuuming)
                        now = time.monotonic()
                        if vacuum and "vacuum_start" not in window:
                            window["vacuum_start"] = now
                        if held and "start" not in window:
                            window["start"] = now
                            window["start_wall"] = time.time()
                        elif not held and "start" in window and "end" not in window:
                            window["end"] = now
                        await asyncio.sleep(LOCK_POLL_S)

                def phase(_: float) -> str:
                    if "start" in window and "end" not in window:
                        return "prune"
                    return "around"

                others_before = all_cpu()
                meter = CpuMeter({"node": [node.popen.pid], "worker": [worker.popen.pid],
                                  "bench": [os.getpid()], "redis": redis_pids()}).start()
                watcher = asyncio.create_task(watch_lock())
                started = time.monotonic()
                await flow.run(f"prune{run}", phase, lambda: "end" in window or time.monotonic() - started > 900)
                await flow.drain()
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                probe.close()
                prune_cpu = meter.stop()
                prune_others = other_processes(others_before, meter.wall_s, own)
                prune_load = os.getloadavg()
                for tab in tabs:
                    await tab.close()
                for reader in readers:
                    reader.cancel()
            await redis.aclose()
            left = sql(database_url, "SELECT count(*) FROM notifications WHERE event_id LIKE 'seed-%%'")[0][0]
            unread_exact = sql(database_url, """
                SELECT count(*) FROM unread_counters c FULL JOIN (
                  SELECT recipient_id, count(*) AS n FROM notifications WHERE read_at IS NULL GROUP BY 1) r
                ON r.recipient_id = c.user_id WHERE coalesce(c.unread, 0) <> coalesce(r.n, 0)""")[0][0]
    prune_s = window.get("end", float("nan")) - window.get("start", float("nan"))
    deleted = due - left
    result = {
        "run": run, "rows_due": due, "rows_deleted": deleted, "index_build_s": build_s, "prune_s": prune_s,
        "rows_per_s": deleted / prune_s if prune_s else float("nan"),
        "autovacuum_started_s": window.get("vacuum_start", float("nan")) - window.get("start", float("nan")),
        "counters_off": unread_exact, "count_frames": flow.count_frames,
        "baseline": flow.stats("baseline"), "during_prune": flow.stats("prune"),
        "cpu_pct": {"baseline": base_cpu, "prune": prune_cpu},
        "other_processes": {"baseline": base_others, "prune": prune_others},
        "loadavg": {"baseline": base_load, "prune": prune_load},
    }
    if args.timeline and "start_wall" in window:
        slow = [f"{at:+.2f}s {ms:.0f}ms" for at, ms in flow.timeline(window["start_wall"]) if ms > 100]
        print("worst latency by 250 ms of sending, from the prune's start (over 100 ms only): " + ", ".join(slow),
              file=sys.stderr)
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def median_of(results: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in results:
        value: Any = r
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--baseline-s", type=float, default=22.0)
    parser.add_argument("--unread-pct", type=int, default=30, help="of the seeded rows, % unread (the rest read)")
    parser.add_argument("--batch-rows", type=int, default=5000, help="retention.batch_rows of the pruning worker")
    parser.add_argument("--timeline", action="store_true", help="print when, during the prune, events were slow")
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN of the first batches (run 1)")
    parser.add_argument("--json", help="also write every run's figures to this file")
    args = parser.parse_args()

    results = [await one_run(run, args) for run in range(1, args.runs + 1)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)

    def cell(*path: str, fmt: str = "{:.0f}") -> str:
        runs = ", ".join(fmt.format(r_value(r, path)) for r in results)
        return f"{fmt.format(median_of(results, *path))} (runs {runs})"

    def r_value(r: dict[str, Any], path: tuple[str, ...]) -> float:
        value: Any = r
        for key in path:
            value = value[key]
        return float(value)

    print(f"| {args.rows:,} rows pruned while {args.rate:g} events/s flow to {args.users} tabs | median of "
          f"{len(results)} |")
    print("|---|---|")
    print(f"| rows deleted per second | {cell('rows_per_s')} |")
    print(f"| prune duration | {cell('prune_s', fmt='{:.1f}')} s |")
    print(f"| p99 delivery latency without a prune | {cell('baseline', 'p99_ms')} ms |")
    print(f"| p99 delivery latency during the prune | {cell('during_prune', 'p99_ms')} ms |")
    print(f"| p50 without / during | {cell('baseline', 'p50_ms')} / {cell('during_prune', 'p50_ms')} ms |")
    print(f"| events lost (baseline / during) | {sum(r['baseline']['lost'] for r in results)} / "
          f"{sum(r['during_prune']['lost'] for r in results)} |")
    build = cell('index_build_s', fmt='{:.1f}')
    print(f"| CREATE INDEX CONCURRENTLY of migration 0004 on {args.rows:,} rows | {build} s |")
    print(f"| users whose counter differs from their unread rows after the prune | "
          f"{sum(r['counters_off'] for r in results)} |")
    for r in results:
        print(f"run {r['run']}: CPU % of a core baseline {r['cpu_pct']['baseline']} / prune {r['cpu_pct']['prune']}; "
              f"load average {r['loadavg']}; other processes baseline {r['other_processes']['baseline']}, "
              f"prune {r['other_processes']['prune']}")


if __name__ == "__main__":
    asyncio.run(main())
