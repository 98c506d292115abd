"""How long one worker takes to store a burst of N single-recipient events (README figure).

The worker process is started and idle first; then N events are enqueued through the real producer
path (50 in flight at once), and the clock stops when the Nth row is committed. Median of R runs.

    .venv/bin/python -m bench.burst [--events 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiopg
from redis.asyncio import Redis

from bench.stack import Processes, env_for, median, stores
from notify_server.ingest.producer import enqueue_event

PRODUCER_CONCURRENCY = 50  # enqueues in flight at once, so the producer is not the bottleneck


async def one_run(database_url: str, redis_url: str, events: int, run: int) -> float:
    env = env_for(database_url, redis_url)
    with Processes() as children:
        worker = children.start("worker", ["worker"], env)
        redis = Redis.from_url(redis_url)
        async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
            await cur.execute("TRUNCATE notifications")
            await asyncio.sleep(2.0)  # the worker is connected and polling
            if worker.popen.poll() is not None:
                raise SystemExit(worker.output())
            started = time.perf_counter()
            for chunk in range(0, events, PRODUCER_CONCURRENCY):
                await asyncio.gather(*(enqueue_event(redis, {
                    "event_id": f"burst-{run}-{i}",
                    "event_type": "CLAIM_REJECTED",
                    "recipients": [{"user_id": f"user-{i % 500}"}],
                    "data": {"provider_name": "Dr. Smith", "claim_id": str(i)},
                }) for i in range(chunk, min(events, chunk + PRODUCER_CONCURRENCY))))
            enqueued = time.perf_counter() - started
            while True:
                await cur.execute("SELECT count(*) FROM notifications")
                (stored,) = await cur.fetchone()
                if stored >= events:
                    break
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
        await redis.aclose()
    print(f"run {run}: enqueued in {enqueued:.2f}s, all {events} stored after {elapsed:.2f}s "
          f"({events / elapsed:.0f} events/s; last row {elapsed - enqueued:.2f}s after the last enqueue)")
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with stores() as (database_url, redis_url):
        times = [await one_run(database_url, redis_url, args.events, run) for run in range(args.runs)]
    best = median(times)
    print(f"median: {args.events} single-recipient events stored by one notify-server worker in {best:.2f}s "
          f"({args.events / best:.0f} events/s), runs: {', '.join(f'{t:.2f}' for t in times)}")


if __name__ == "__main__":
    asyncio.run(main())
