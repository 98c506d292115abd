"""What preferences cost the worker (issue 19), against the code before preferences existed.

Private Postgres and Redis (bench.budget's; its imports need the `bench` extra). `--baseline DIR` is a
tree of the commit before this work (`git archive aae390e | tar -x -C DIR`); its processes run from it.

1. The 500 events/s path: batches of one single-recipient event, nobody holding preferences, through
   process_events in probe processes (fresh, interleaved, both orders): the code before, this code (the
   check in the store's statement), and this code alternating batch by batch a critical type (nothing
   read), the check, and a query of its own; with `--instructions`, the same probes under callgrind
   (instructions per batch: what the machine's other load cannot change).
2. A 10,000-recipient event in this process: the preferences step's own CPU (time.process_time)
   against the whole pipeline's, with nobody and with 10% of the recipients holding preferences.
3. `notify-server worker` processes, 2,000 of the 10,000 users present on a node (frames built and
   written to its push stream): each run starts one worker per variant in turn and sends it E events of
   10,000 recipients; its CPU (utime + stime from /proc) from the first enqueue to the last row, divided
   by the recipients; the Postgres cluster's likewise. Medians over the runs. Variants:

- `before`: the code before this work;
- `none`: this code, nobody holds preferences;
- `10%`: every 10th recipient holds preferences that leave this type on (every row still stored, and
  1,000 users' preferences read and applied: the worst case);
- `10% muting`: the same users have this type's category off (they get nothing: fewer rows).

    .venv/bin/python -m bench.preferences --baseline /tmp/notify-baseline [--runs 7] [--events 4] [--instructions]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiopg
import orjson
from redis.asyncio import Redis

from bench.budget import cluster_pids, private_stores
from bench.procstats import cpu_seconds
from bench.stack import env_for, median
from notify_server.ingest.producer import enqueue_event
from notify_server.transport.presence import Presence

REPO = Path(__file__).resolve().parent.parent
RECIPIENTS = 10_000
ONLINE = 2_000
NODE = "bench-node"
KEEPS_ON = {"event_types": {"APPOINTMENT_REMINDER": {"in_app": False}}}  # holds a preference; claims still on
MUTES = {"categories": {"claims": {"in_app": False}}}
SMALL_EVENTS = 1000
VARIANTS = {"before": None, "none": None, "10%": KEEPS_ON, "10% muting": MUTES}


def start_worker(tree: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m notify_server worker` run from `tree` (its cwd comes first on sys.path)."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "notify_server", "worker"], cwd=tree, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


async def set_preferences(cur: Any, settings: dict[str, Any] | None) -> None:
    await cur.execute("DELETE FROM notification_preferences")
    if settings is not None:
        await cur.execute(
            "INSERT INTO notification_preferences (user_id, settings)"
            " SELECT 'user-' || i, %s::jsonb FROM generate_series(0, %s, 10) AS i",
            (orjson.dumps(settings).decode(), RECIPIENTS - 1))


async def one_variant(
    name: str, tree: Path, database_url: str, redis_url: str, data_dir: Path, events: int, run: int, log: Path
) -> dict[str, float]:
    redis = Redis.from_url(redis_url)
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        await cur.execute("TRUNCATE notifications; DELETE FROM unread_counters")
        await set_preferences(cur, VARIANTS[name])
        await cur.execute("ANALYZE")
        worker = start_worker(tree, env_for(database_url, redis_url), log)
        try:
            await asyncio.sleep(3.0)  # imported, connected, polling
            if worker.poll() is not None:
                raise SystemExit(f"the {name} worker exited: see {log}")
            # A warm-up event: the worker's pool connected and its statements planned once, as in a worker
            # that has been running.
            await enqueue_event(redis, {"event_id": f"warm-{run}-{name}", "event_type": "CLAIM_REJECTED",
                                        "recipients": [{"user_id": "warm-up"}],
                                        "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"}})
            while True:
                await cur.execute("SELECT count(*) FROM notifications")
                if (await cur.fetchone())[0] >= 1:
                    break
                await asyncio.sleep(0.01)
            pg0 = {pid: cpu_seconds(pid) for pid in cluster_pids(data_dir)}
            worker0, t0 = cpu_seconds(worker.pid), time.perf_counter()
            for n in range(events):
                await enqueue_event(redis, {
                    "event_id": f"fanout-{run}-{name}-{n}", "event_type": "CLAIM_REJECTED",
                    "recipients": [{"user_id": f"user-{i}", "email": f"u{i}@example.com"} for i in range(RECIPIENTS)],
                    "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"},
                })
            expected = 1 + events * (RECIPIENTS - (RECIPIENTS // 10 if VARIANTS[name] is MUTES else 0))
            while True:
                await cur.execute("SELECT count(*) FROM notifications")
                if (await cur.fetchone())[0] >= expected:
                    break
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            worker_s = cpu_seconds(worker.pid) - worker0
            pg_s = sum(cpu_seconds(pid) - pg0.get(pid, 0.0) for pid in cluster_pids(data_dir))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    await redis.aclose()
    recipients = events * RECIPIENTS
    return {"worker_us": worker_s / recipients * 1e6, "postgres_us": pg_s / recipients * 1e6,
            "wall_ms_per_event": elapsed / events * 1000}


# A probe run in a fresh process from a given tree (the code before this work has no bench/preferences.py):
# N batches of one single-recipient event through process_events, CPU (process_time) and wall per batch.
# Mode "ab" (this code only) alternates, batch by batch, the check in the store's round trip, a query of its
# own per batch, and the same event marked critical (nothing checked or read: the work of the code before),
# so the three see the same machine: what each costs, free of the machine's noise.
SMALL_PROBE = """
import asyncio, json, sys, time
from notify_server.core.settings import load_settings
from workers.context import WorkerContext
from workers.pipeline import Attempt, process_events
database_url, redis_url, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
async def main():
    settings = load_settings(environ={}).replace(database={"url": database_url}, redis={"url": redis_url})
    context = WorkerContext.build(settings)
    sums = {"cpu": [0.0, 0.0, 0.0], "wall": [0.0, 0.0, 0.0]}
    if mode == "ab":
        import dataclasses
        import workers.audience
        # The same template marked critical: nothing to check, nothing read (what the pipeline did before).
        critical = dataclasses.replace(settings.templates["CLAIM_REJECTED"], event_type="CRITICAL_TWIN", critical=True)
        context.settings = dataclasses.replace(settings, templates={**settings.templates, "CRITICAL_TWIN": critical})
    for n in range(count + 100):  # the first 100 warm up
        side = n % 3 if mode == "ab" else 0
        if mode == "ab":
            workers.audience.DEFER_MAX_RECIPIENTS = 10 if side == 0 else 0  # 0: a query of its own
        event = {"event_id": f"small-{mode}-{time.time_ns()}-{n}",
                 "event_type": "CRITICAL_TWIN" if mode == "ab" and side == 2 else "CLAIM_REJECTED",
                 "recipients": [{"user_id": f"user-{n % 10000}"}], "data": {"provider_name": "D", "claim_id": "c"}}
        c0, w0 = time.process_time(), time.perf_counter()
        await process_events(context, [Attempt(event)])
        if n >= 100:
            sums["cpu"][side] += time.process_time() - c0
            sums["wall"][side] += time.perf_counter() - w0
    await context.close()
    per = count / 3 if mode == "ab" else count
    print(json.dumps({key: [total / per * 1e6 for total in values] for key, values in
                      (("cpu_us", sums["cpu"]), ("wall_us", sums["wall"]))}))
asyncio.run(main())
"""


SMALL_MODES = {"before": "the code before this work (no preferences)",
               "query": "this code, reading preferences with a query of its own",
               "check": "this code (the check in the store's round trip)",
               "ab: none": "this code, alternating: a critical type (nothing read)",
               "ab: check": "this code, alternating: the check in the store's trip",
               "ab: query": "this code, alternating: a query of its own"}


def small_batches(baseline: Path, database_url: str, redis_url: str, runs: int) -> dict[str, list[dict[str, float]]]:
    """Probes in fresh processes, interleaved run by run: the code before this work, this code (the check
    in the store's round trip), and this code alternating the check and a query of its own batch by batch."""
    out: dict[str, list[dict[str, float]]] = {"before": [], "check": [], "ab: none": [], "ab: check": [],
                                              "ab: query": []}
    for run in range(runs):
        # Both orders: each probe leaves its rows and counter updates to the next (table growth, dead tuples).
        for mode in ("before", "check", "ab") if run % 2 == 0 else ("ab", "check", "before"):
            probe = subprocess.run(
                [sys.executable, "-c", SMALL_PROBE, database_url, redis_url, mode, str(SMALL_EVENTS)],
                cwd=baseline if mode == "before" else REPO, env=env_for(database_url, redis_url),
                capture_output=True, text=True, timeout=600)
            if probe.returncode != 0:
                raise SystemExit(f"the {mode} probe failed: {probe.stderr[-2000:]}")
            result = json.loads(probe.stdout.strip().splitlines()[-1])
            if mode == "ab":
                for side, name in enumerate(("ab: check", "ab: query", "ab: none")):
                    out[name].append({"cpu_us": result["cpu_us"][side], "wall_us": result["wall_us"][side]})
            else:
                out[mode].append({"cpu_us": result["cpu_us"][0], "wall_us": result["wall_us"][0]})
    return out


def instructions_per_batch(baseline: Path, database_url: str, redis_url: str) -> dict[str, float]:
    """The same probe under valgrind's callgrind: the worker's instructions per batch, which the machine's
    other load does not change (the difference between 50 and 350 batches, so start-up cancels out).
    Modes: the code before this work, this code (the check in the store's statement), this code reading
    preferences with a query of its own per batch."""
    query = SMALL_PROBE.replace("async def main():", "import workers.audience\n"
                                "workers.audience.DEFER_MAX_RECIPIENTS = 0\nasync def main():", 1)
    out: dict[str, float] = {}
    for name, tree, probe in (("before", baseline, SMALL_PROBE), ("check", REPO, SMALL_PROBE), ("query", REPO, query)):
        counts = []
        for batches in (50, 350):
            run = subprocess.run(
                ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", probe,
                 database_url, redis_url, name, str(batches)],
                cwd=tree, env=env_for(database_url, redis_url), capture_output=True, text=True, timeout=1800)
            found = re.search(r"Collected : (\d+)", run.stderr)
            if found is None:
                raise SystemExit(f"callgrind gave no count for {name}: {run.stderr[-2000:]}")
            counts.append(int(found.group(1)))
        out[name] = (counts[1] - counts[0]) / 300
    return out


async def phases(database_url: str, redis_url: str, events: int) -> dict[str, dict[str, float]]:
    """In this process, CPU time (time.process_time) of the whole pipeline for one 10,000-recipient event
    (process_events: parse, preferences, store, presence, frames, XADD) and of its preferences step alone
    (select_audience), per variant: the added cost measured directly, not as a difference of two noisy
    totals. Medians over `events` events."""
    from notify_server.core.settings import load_settings
    from notify_server.ingest.events import parse_event
    from workers.audience import select_audience
    from workers.context import WorkerContext
    from workers.pipeline import Attempt, process_events

    settings = load_settings(environ={}).replace(database={"url": database_url}, redis={"url": redis_url})
    context = WorkerContext.build(settings)
    out: dict[str, dict[str, float]] = {}
    try:
        for name in ("none", "10%"):
            async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
                await cur.execute("TRUNCATE notifications; DELETE FROM unread_counters")
                await set_preferences(cur, VARIANTS[name])
                await cur.execute("ANALYZE")
            whole: list[float] = []
            step: list[float] = []
            for n in range(events + 1):  # the first one warms up
                event = {"event_id": f"phase-{name}-{n}", "event_type": "CLAIM_REJECTED",
                         "recipients": [{"user_id": f"user-{i}", "email": f"u{i}@example.com"}
                                        for i in range(RECIPIENTS)],
                         "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"}}
                new = parse_event(event, settings.templates)
                started = time.process_time()
                await select_audience(context, [(0, new)], [event])
                audience_s = time.process_time() - started
                started = time.process_time()
                await process_events(context, [Attempt(event)])
                whole_s = time.process_time() - started
                if n:
                    step.append(audience_s / RECIPIENTS * 1e6)
                    whole.append(whole_s / RECIPIENTS * 1e6)
            out[name] = {"pipeline_us": median(whole), "preferences_us": median(step)}
    finally:
        await context.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="a tree of the code before preferences")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=4, help="10,000-recipient events per variant and run")
    parser.add_argument("--phase-events", type=int, default=9, help="events measured in process, per variant")
    parser.add_argument("--small-runs", type=int, default=9, help="probe processes per mode of the small batches")
    parser.add_argument("--instructions", action="store_true",
                        help="also count the small batches' instructions under valgrind (a few minutes)")
    parser.add_argument("--out", default=None, help="write the raw figures here (JSON)")
    args = parser.parse_args()
    baseline = Path(args.baseline).resolve()
    if not (baseline / "notify_server").is_dir():
        raise SystemExit(f"{baseline} holds no notify_server/ (git archive <commit> | tar -x -C {baseline})")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-preferences-worker.log"
    in_process: dict[str, dict[str, float]] = {}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with private_stores() as (database_url, redis_url, _redis_pid, data_dir):
        redis = Redis.from_url(redis_url)
        await Presence(redis, ttl_s=3600).add(NODE, [f"user-{i}" for i in range(0, RECIPIENTS, RECIPIENTS // ONLINE)])
        await redis.aclose()
        small = small_batches(baseline, database_url, redis_url, args.small_runs)
        instructions = instructions_per_batch(baseline, database_url, redis_url) if args.instructions else {}
        in_process = await phases(database_url, redis_url, args.phase_events)
        for run in range(args.runs):
            order = list(VARIANTS) if run % 2 == 0 else list(reversed(VARIANTS))  # both orders: no variant always first
            for name in order:
                tree = baseline if name == "before" else REPO
                result = await one_variant(name, tree, database_url, redis_url, data_dir, args.events, run, log)
                figures[name].append(result)
                print(f"run {run + 1} {name:>11}: worker {result['worker_us']:6.1f} µs/recipient, postgres"
                      f" {result['postgres_us']:6.1f} µs/recipient, {result['wall_ms_per_event']:5.0f} ms/event",
                      flush=True)
    print(f"\nbatches of one single-recipient event (the 500 events/s path), nobody holding preferences,"
          f" {SMALL_EVENTS} batches per probe process, medians of {args.small_runs} probes:")
    for pair in (("before", "check"), ("ab: none", "ab: check", "ab: query")):
        base_cpu = median([r["cpu_us"] for r in small[pair[0]]])
        for mode in pair:
            cpu = median([r["cpu_us"] for r in small[mode]])
            probes = ", ".join(f"{r['cpu_us']:.0f}" for r in small[mode])
            wall = median([r["wall_us"] for r in small[mode]])
            print(f"  {SMALL_MODES[mode]:>58}: {cpu:5.0f} µs CPU per batch ({(cpu / base_cpu - 1) * 100:+5.1f} %;"
                  f" probes {probes}), {wall:5.0f} µs wall")
    for name, count in instructions.items():
        print(f"  {SMALL_MODES[name]:>58}: {count / 1000:5.0f} thousand instructions per batch (callgrind)"
              f" ({(count / instructions['before'] - 1) * 100:+5.1f} %)")
    print(f"in process, CPU of one {RECIPIENTS:,}-recipient event, median of {args.phase_events}:")
    for name, phase in in_process.items():
        share = phase["preferences_us"] / phase["pipeline_us"] * 100
        print(f"  {name:>11}: pipeline {phase['pipeline_us']:5.2f} µs/recipient, of which preferences"
              f" {phase['preferences_us']:5.3f} µs/recipient ({share:.1f} %)")
    if args.runs:
        print(f"\n`notify-server worker` processes, medians of {args.runs} runs, {args.events} events of"
              f" {RECIPIENTS:,} recipients each ({ONLINE:,} online):")
        before = median([f["worker_us"] for f in figures["before"]])
        for name, results in figures.items():
            worker = median([f["worker_us"] for f in results])
            runs = ", ".join(f"{f['worker_us']:.1f}" for f in results)
            print(f"  {name:>11}: worker {worker:6.1f} µs/recipient ({(worker / before - 1) * 100:+5.1f} % against"
                  f" before; runs {runs}), postgres {median([f['postgres_us'] for f in results]):6.1f} µs/recipient,"
                  f" {median([f['wall_ms_per_event'] for f in results]):5.0f} ms/event")
    if args.out:
        Path(args.out).write_text(json.dumps({"processes": figures, "in_process": in_process, "small": small,
                                              "instructions_per_batch": instructions}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
