"""Does the heartbeat sweep stall delivery? Latency over time with C idle-ish connections.

notify-server pings every socket in one sweep every `heartbeat.interval_s` (30 s). This opens C
connections (C/2 users × 2 tabs), sends events at R/s for D seconds (longer than one interval) and
prints the worst latency of each 1-second bucket, once with the default interval and once with the
interval set out of the way (NOTIFY_HEARTBEAT_INTERVAL_S=3600), so a periodic stall shows as a spike
that the second run does not have.

    .venv/bin/python -m bench.heartbeat_probe [--connections 10000] [--rate 100] [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from typing import Any

from bench.load import Session, analyse, start_stack, wait_frames
from bench.loadclient import ClientPool, client_env_ok
from bench.producer import ProducerPool
from bench.stack import Processes, percentile, stores


async def one(interval_s: int | None, args: argparse.Namespace) -> dict[str, Any]:
    users = [f"u{i}" for i in range(args.connections // 2)]
    with stores() as (database_url, redis_url), Processes() as children:
        extra = {"NOTIFY_HEARTBEAT_INTERVAL_S": str(interval_s)} if interval_s else {}
        stack = await start_stack(children, "notify", database_url, redis_url, extra_env=extra)
        clients = ClientPool("notify", 2)
        producers = ProducerPool("notify", redis_url, 1)
        s = Session(stack, clients, producers)
        try:
            await s.open(users, 2, 50)
            await s.step(users, 50, 50)
            count = int(args.rate * args.seconds)
            await clients.reset()
            seq0 = s.seq
            s.seq += count
            sent = await producers.run(count=count, rate=args.rate, users=users, tag=s.tag, seq0=seq0)
            await wait_frames(clients, 2 * count)
            d = await clients.collect()
            summary = analyse(d, seq0, count, users, s.conn_user, s.tabs_of, sent["started_at"])
            buckets: dict[int, list[float]] = collections.defaultdict(list)
            for lat, at in zip(d.latency_s, d.received_at, strict=False):
                buckets[int(at - sent["started_at"])].append(lat * 1000)
            worst = {b: max(v) for b, v in sorted(buckets.items())}
            p99s = {b: percentile(v, 99) for b, v in sorted(buckets.items())}
        finally:
            await clients.shutdown()
            await producers.shutdown()
    return {"interval_s": interval_s or 30, "summary": summary, "worst_ms_by_second": worst, "p99_ms_by_second": p99s}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=40)
    args = parser.parse_args()
    client_env_ok()
    for interval in (None, 3600):
        r = await one(interval, args)
        s = r["summary"]
        print(f"heartbeat interval {r['interval_s']} s, {args.connections} connections, {args.rate:g} events/s: "
              f"delivered {s['delivered']}/{s['expected']}, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
              f"max {s['max_ms']:.0f} ms")
        spikes = {b: round(v) for b, v in r["worst_ms_by_second"].items()}
        print("  worst latency per second of the run (ms):", " ".join(f"{b}:{v}" for b, v in spikes.items()))


if __name__ == "__main__":
    asyncio.run(main())
