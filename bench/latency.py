"""End-to-end latency on an idle machine: one user with two tabs on two server nodes.

Each event is enqueued through the real producer path with its send time in `metadata`; the clock
stops when the frame is read by the tab, so the arq hop, the Postgres commit, the push stream and the
WebSocket write are all inside. Also reports the worker's idle CPU at each arq poll delay.

    .venv/bin/python -m bench.latency [--events 100] [--poll-delays 0.5,0.05,0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aiohttp
from redis.asyncio import Redis

from bench.stack import Processes, env_for, median, percentile, stores
from notify_server.core.settings import DatabaseSettings
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.db import Database
from notify_server.storage.sessions import SessionStore
from tests.processes import free_port, wait_http_ok

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def one_setting(database_url: str, redis_url: str, poll_delay_s: float, events: int) -> dict[str, float]:
    env = env_for(database_url, redis_url, NOTIFY_WORKER_POLL_DELAY_S=str(poll_delay_s))
    ports = [free_port(), free_port()]
    with Processes() as children:
        nodes = [children.start(f"node{i}", ["serve", "--port", str(p)], dict(env, NOTIFY_SERVER_NODE_ID=f"bench-{i}"))
                 for i, p in enumerate(ports)]
        worker = children.start("worker", ["worker"], env)
        for port, node in zip(ports, nodes):
            await wait_http_ok(f"http://127.0.0.1:{port}/readyz", node)
        db = Database(DatabaseSettings(url=database_url, pool_min_size=1, pool_max_size=2))
        token = (await SessionStore(db).create("bench-user", 3600)).token
        await db.close()
        await asyncio.sleep(1.0)
        idle_before = cpu_seconds(worker.popen.pid)
        await asyncio.sleep(5.0)
        idle_cpu = (cpu_seconds(worker.popen.pid) - idle_before) / 5.0

        redis = Redis.from_url(redis_url)
        latencies_ms: list[float] = []
        async with aiohttp.ClientSession() as http:
            tabs = [await http.ws_connect(f"http://127.0.0.1:{p}/ws/notifications", params={"token": token})
                    for p in ports]
            for tab in tabs:
                await tab.receive_json(timeout=5)

            async def read_tab(tab: aiohttp.ClientWebSocketResponse) -> list[float]:
                seen = []
                while len(seen) < events:
                    frame = await tab.receive_json(timeout=30)
                    if frame["type"] == "notification":
                        seen.append((time.time() - frame["data"]["metadata"]["sent_at"]) * 1000)
                return seen

            readers = [asyncio.create_task(read_tab(tab)) for tab in tabs]
            for i in range(events):
                await enqueue_event(redis, {
                    "event_id": f"lat-{poll_delay_s}-{i}", "event_type": "CLAIM_REJECTED",
                    "recipients": [{"user_id": "bench-user"}],
                    "data": {"provider_name": "Dr. Smith", "claim_id": str(i)},
                    "metadata": {"sent_at": time.time()},
                })
                await asyncio.sleep(0.1)
            per_tab = await asyncio.gather(*readers)
            # A notification has arrived when it is in *both* tabs: the later of the two.
            latencies_ms = [max(pair) for pair in zip(*per_tab)]
            for tab in tabs:
                await tab.close()
        await redis.aclose()
    return {
        "poll_delay_s": poll_delay_s,
        "p50_ms": median(latencies_ms),
        "p95_ms": percentile(latencies_ms, 95),
        "max_ms": max(latencies_ms),
        "worker_idle_cpu_pct": idle_cpu * 100,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--poll-delays", default="0.5,0.05,0.01")
    args = parser.parse_args()
    delays = [float(d) for d in args.poll_delays.split(",")]
    with stores() as (database_url, redis_url):
        print("| arq poll delay | p50 (both tabs) | p95 | max | worker CPU when idle |")
        print("|---|---|---|---|---|")
        for delay in delays:
            r = await one_setting(database_url, redis_url, delay, args.events)
            print(f"| {delay:g} s | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['max_ms']:.1f} ms "
                  f"| {r['worker_idle_cpu_pct']:.1f} % of a core |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
