"""What `redis.min_replicas_acked` costs per event (issue 21): `enqueue_event` with and without WAIT.

A private Redis primary (AOF, fsync every second) and one replica on loopback ports (tests/replicated.py's
processes), this machine's cores shared with them. For each mode, alternating in blocks so both see the
same noise:

- one at a time: `enqueue_event` awaited in a loop — the latency of one call (p50, p99);
- 50 in flight: events per second through one producer, and CPU per event of the producer process, the
  primary and the replica (from /proc).

    .venv/bin/python -m bench.replica_ack [--events 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.procstats import cpu_seconds
from notify_server.ingest.producer import enqueue_event
from tests.processes import free_port
from tests.replicated import RedisProcess, online_replicas

INFLIGHT = 50


def event(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": "u1"}],
            "data": {"provider_name": "Dr. Smith", "claim_id": event_id}}


async def one_at_a_time(client: Redis, tag: str, count: int, replicas: int) -> list[float]:
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        await enqueue_event(client, event(f"{tag}-{n}"), min_replicas_acked=replicas, replica_ack_timeout_ms=1000)
        latencies.append(time.perf_counter() - started)
    return latencies


async def in_flight(client: Redis, tag: str, count: int, replicas: int, pids: list[int]) -> tuple[float, float]:
    """(events per second, CPU µs per event of this process + primary + replica)."""
    limit = asyncio.Semaphore(INFLIGHT)

    async def send(n: int) -> None:
        async with limit:
            await enqueue_event(client, event(f"{tag}-{n}"), min_replicas_acked=replicas, replica_ack_timeout_ms=1000)

    cpu0 = sum(cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    await asyncio.gather(*(send(n) for n in range(count)))
    wall = time.perf_counter() - started
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
    return count / wall, cpu / count * 1e6


def ms(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000, help="events per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="notify-replica-ack-"))
    data = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--repl-diskless-sync-delay", "0"]
    primary = RedisProcess("primary", free_port(), root / "primary", data)
    replica = RedisProcess("replica", free_port(), root / "replica", [*data, "--replicaof", "127.0.0.1",
                                                                       str(primary.port)])
    primary.start()
    replica.start()
    try:
        while online_replicas(primary.client().info("replication")) < 1:  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
        assert primary.popen is not None and replica.popen is not None
        pids = [os.getpid(), primary.popen.pid, replica.popen.pid]
        client = Redis(host="127.0.0.1", port=primary.port)
        figures: dict[int, dict[str, list[float]]] = {0: {}, 1: {}}
        for round_no in range(args.rounds):
            for replicas in (0, 1):
                tag = f"r{round_no}-w{replicas}"
                latencies = await one_at_a_time(client, tag + "-seq", args.events, replicas)
                rate, cpu_us = await in_flight(client, tag + "-par", args.events, replicas, pids)
                mine = figures[replicas]
                mine.setdefault("p50", []).append(ms(latencies, 50))
                mine.setdefault("p99", []).append(ms(latencies, 99))
                mine.setdefault("rate", []).append(rate)
                mine.setdefault("cpu", []).append(cpu_us)
                print(f"round {round_no + 1}, min_replicas_acked {replicas}: one at a time p50 "
                      f"{mine['p50'][-1]:.2f} ms p99 {mine['p99'][-1]:.2f} ms; {INFLIGHT} in flight {rate:,.0f} "
                      f"events/s, {cpu_us:,.0f} µs CPU per event (producer + primary + replica)", flush=True)
            await client.flushdb()
        await client.aclose()
        print("\n| min_replicas_acked | one call p50 | one call p99 | events/s, 50 in flight | CPU µs / event |")
        print("|---|---|---|---|---|")
        for replicas, mine in figures.items():
            runs = ", ".join(f"{v:,.0f}" for v in mine["rate"])
            print(f"| {replicas} | {statistics.median(mine['p50']):.2f} ms | {statistics.median(mine['p99']):.2f} ms "
                  f"| {statistics.median(mine['rate']):,.0f} ({runs}) | {statistics.median(mine['cpu']):,.0f} |")
    finally:
        replica.stop()
        primary.stop()


if __name__ == "__main__":
    asyncio.run(main())
