"""How the cost grows (issue 11): CPU per event and latency against connections, recipients per event and
node count, one dimension at a time, so a user can size a deployment.

Private Postgres and Redis (bench.budget), 2 workers, users with two tabs, events through
`enqueue_event` from 2 producer processes. Each row: a fresh stack, the connections opened, a warm-up,
then the measured step; CPU from /proc of every process group, latency = enqueue call to frame (both
tabs counted). One process holds at most ~19,000 descriptors here (ulimit -Hn 20000), so 20,000
connections are spread over 2 nodes.

    .venv/bin/python -m bench.scaling [--dimensions connections,recipients,nodes] [--seconds 15] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from bench.budget import cluster_pids, private_stores
from bench.load import Session, analyse, start_stack, wait_frames
from bench.loadclient import ClientPool
from bench.procstats import CpuMeter
from bench.producer import ProducerPool, user_for_seq
from bench.stack import Processes

RATE = 500  # events/s for the connections and nodes rows
DELIVERIES_PER_S = 1000  # recipients rows: events/s = this / recipients (1,000 deliveries a second)


async def one(database_url: str, redis_url: str, data_dir: Path, redis_pid: int, *, connections: int, nodes: int,
              recipients: int, seconds: float, label: str) -> dict[str, Any]:
    users = [f"{label}-{i}" for i in range(max(connections // 2, recipients))]
    connected = users[: connections // 2]
    with Processes() as children:
        stack = await start_stack(children, "notify", database_url, redis_url, nodes=nodes, workers=2)
        clients = ClientPool("notify", max(2, connections // 8000 + 1))
        producers = ProducerPool("notify", redis_url, 2)
        s = Session(stack, clients, producers)
        try:
            opened = await s.open(connected, 2, 100)
            await asyncio.sleep(1.0)
            # Warm-up: pools opened (their Postgres backends exist before the meter starts), caches, plans.
            await producers.run(count=40, rate=40, users=connected, tag=s.tag, seq0=s.seq)
            s.seq += 40
            await asyncio.sleep(1.5)
            rate = RATE if recipients == 1 else max(0.2, DELIVERIES_PER_S / recipients)
            count = max(1, int(rate * seconds))
            await s.clients.reset()
            seq0 = s.seq
            s.seq += count
            groups = {"producer": producers.pids, "worker": stack.worker_pids, "node": stack.server_pids,
                      "postgres": cluster_pids(data_dir), "redis": [redis_pid]}
            meter = CpuMeter(groups, dynamic_postgres=False).start()
            fanout = recipients > 1
            target = users[:recipients] if fanout else connected
            sent = await producers.run(count=count, rate=rate if count > 1 else 0, users=target, tag=s.tag,
                                       seq0=seq0, recipients_per_event=recipients)
            if fanout:
                expected = count * sum(s.tabs_of.get(u, 0) for u in target)
            else:
                expected = sum(s.tabs_of.get(target[user_for_seq(q, len(target))], 0)
                               for q in range(seq0, seq0 + count))
            await wait_frames(s.clients, expected, cap_s=120)
            meter.stop()
            d = await s.clients.collect()
            stats = analyse(d, seq0, count, target, s.conn_user, s.tabs_of, sent["started_at"],
                            fanout_users=set(target) if fanout else None)
            stats["expected"] = expected  # analyse() counts one fan-out event; these rows send `count`
            cpu_us = {name: sec * 1e6 / count for name, sec in meter.seconds.items()}
            service = sum(cpu_us[k] for k in ("worker", "postgres", "redis", "node"))
            return {
                "label": label, "connections": connections, "opened": opened["opened"], "open_s": opened["open_s"],
                "nodes": nodes,
                "recipients": recipients, "events": count, "rate": rate, "delivered": stats["delivered"],
                "expected": stats["expected"], "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"],
                "cpu_us_per_event": cpu_us, "service_us_per_event": service,
                "service_us_per_delivery": service * count / max(1, stats["delivered"]),
            }
        finally:
            await clients.shutdown()
            await producers.shutdown()


def plan(dimensions: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if "connections" in dimensions:
        rows += [{"connections": c, "nodes": 1 if c <= 10_000 else 2, "recipients": 1, "label": f"c{c}"}
                 for c in (2_000, 10_000, 20_000)]
    if "recipients" in dimensions:
        rows += [{"connections": 2_000, "nodes": 1, "recipients": r, "label": f"r{r}"} for r in (1, 10, 100, 10_000)]
    if "nodes" in dimensions:
        rows += [{"connections": 2_000, "nodes": n, "recipients": 1, "label": f"n{n}"} for n in (1, 2, 4, 8)]
    return rows


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with private_stores() as (database_url, redis_url, redis_pid, data_dir):
        for run_index in range(args.runs):
            for row in plan(args.dimensions):
                r = await one(database_url, redis_url, data_dir, redis_pid, seconds=args.seconds,
                              **{**row, "label": f"{row['label']}-{run_index}"})
                r["run"] = run_index
                results.append(r)
                print(json.dumps(r), flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| connections | nodes | recipients / event | events/s | delivered | p50 | p99 | service CPU µs / event |"
             " µs / delivery | worker | Postgres | Redis | node(s) | time to open |", "|" + "---|" * 14]
    keys = sorted({(r["connections"], r["nodes"], r["recipients"]) for r in results})
    for key in keys:
        rs = [r for r in results if (r["connections"], r["nodes"], r["recipients"]) == key]

        def med(get: Any, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(get(r) for r in rs)

        lines.append(
            f"| {key[0]:,} | {key[1]} | {key[2]:,} | {med(lambda r: r['rate']):g} | "
            f"{sum(r['delivered'] for r in rs)}/{sum(r['expected'] for r in rs)} | "
            f"{med(lambda r: r['p50_ms'] or 0):.0f} ms | {med(lambda r: r['p99_ms'] or 0):.0f} ms | "
            f"{med(lambda r: r['service_us_per_event']):,.0f} | {med(lambda r: r['service_us_per_delivery']):,.0f} | "
            + " | ".join(f"{med(lambda r, k=k: r['cpu_us_per_event'][k]):,.0f}" for k in ("worker", "postgres", "redis",
                                                                                            "node"))
            + f" | {med(lambda r: r.get('open_s') or 0):.2f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dimensions", default="connections,recipients,nodes")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    args.dimensions = args.dimensions.split(",")
    results = asyncio.run(run(args))
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
