"""Where a 10,000-recipient fan-out spends its time in the worker, phase by phase (median of R runs):
validation and rendering, the Postgres transaction, the presence look-up (2,000 of them online), and
serialising the online recipients' frames.

    .venv/bin/python -m bench.fanout_phases [--recipients 10000] [--online 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from redis.asyncio import Redis

from bench.stack import median, stores
from notify_server.core.settings import load_settings
from notify_server.ingest.events import parse_event
from notify_server.storage.db import Database
from notify_server.storage.notifications import NotificationRepository
from notify_server.transport.frames import notification_frames
from notify_server.transport.presence import Presence


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--online", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    phases: dict[str, list[float]] = {"validate+render": [], "store": [], "presence": [], "frames": []}
    with stores() as (database_url, redis_url):
        settings = load_settings(environ={}).replace(database={"url": database_url}, redis={"url": redis_url})
        db = Database(settings.database)
        redis = Redis.from_url(redis_url)
        repository = NotificationRepository(db)
        presence = Presence(redis, ttl_s=60)
        await presence.add("bench-node", [f"user-{i}" for i in range(args.online)])
        for run in range(args.runs):
            event = {
                "event_id": f"fanout-{run}", "event_type": "CLAIM_REJECTED",
                "recipients": [{"user_id": f"user-{i}", "email": f"u{i}@example.com"} for i in range(args.recipients)],
                "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"},
            }
            t0 = time.perf_counter()
            new = parse_event(event, settings.templates)
            t1 = time.perf_counter()
            (stored,) = await repository.store_events([new])
            t2 = time.perf_counter()
            nodes = await presence.nodes_for_users([n.recipient_id for n in stored.notifications])
            t3 = time.perf_counter()
            online = set(nodes.get("bench-node", []))
            notification_frames([n for n in stored.notifications if n.recipient_id in online])
            t4 = time.perf_counter()
            for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                phases[name].append(seconds)
        await redis.aclose()
        await db.close()
    total = sum(median(v) for v in phases.values())
    print(f"{args.recipients} recipients, {args.online} online, median of {args.runs} runs:")
    for name, values in phases.items():
        print(f"  {name:16s} {median(values) * 1000:7.1f} ms")
    print(f"  {'total':16s} {total * 1000:7.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
