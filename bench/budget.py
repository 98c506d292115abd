"""The CPU budget per event (issue 11): microseconds of CPU that one event costs in each process, at a
steady rate, beside the physical floors of this machine.

Private Postgres and Redis (their own processes, so their CPU is theirs alone), 1 node + 2 workers, C
connections (C/2 users × 2 tabs), events through the public producer path (`enqueue_event`, 2 producer
processes) at each rate for D seconds, each to one user (both tabs). For every process group: CPU seconds
(utime + stime from /proc) over the step ÷ events = µs per event. The workers' and the node's CPU is
split into stages by a py-spy profile of the same step (inclusive shares of the stage functions).

Floors, measured on the same private servers: a Redis round trip (PING: client + server CPU and wall), a
Postgres commit (one-row INSERT, synchronous_commit on: wall and server CPU), a WebSocket frame write
(aiohttp's `send_str` of a notification frame, in process).

    .venv/bin/python -m bench.budget [--rates 500,2000] [--seconds 20] [--connections 2000] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiopg
from aiohttp import web
from redis.asyncio import Redis

from bench.load import Session, start_profilers, stop_profiler, wait_frames
from bench.loadclient import ClientPool
from bench.procstats import CpuMeter, cpu_seconds
from bench.producer import ProducerPool, user_for_seq
from bench.pyspy_summary import summarise
from bench.stack import Processes
from notify_server.ops import embedded
from notify_server.storage.migrations import apply_migrations
from tests.processes import free_port

# A WebSocket client in another process that reads everything (for the frame-write floor).
READER = """
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n")
while s.recv(1 << 20):
    pass
"""

# Stage -> the functions whose inclusive share of the process's busy samples it is.
WORKER_STAGES = {
    "claim + load (Lua script, decode)": ["eventqueue.py:EventQueue.claim"],
    "validate + render": ["events.py:parse_event"],
    "store (Postgres transaction)": ["workers/pipeline.py:_store"],
    "route (presence look-up, frames, XADD)": ["workers/pipeline.py:push_stored"],
    "finish (Lua script, results)": ["eventqueue.py:EventQueue.finish"],
}
NODE_STAGES = {
    "read stream (XREAD, decode)": ["push.py:StreamPushTransport.read"],
    "deliver (map, outbox)": ["connections.py:NotificationWebSocketManager.deliver"],
    "write frame (send_str)": ["connections.py:NotificationWebSocketManager._drain"],
}


# ---------------------------------------------------------------- private servers


@contextlib.contextmanager
def private_stores() -> Iterator[tuple[str, str, int, Path]]:
    """(database url, redis url, redis pid, postgres data dir) of servers started for this run only."""
    root = Path(tempfile.mkdtemp(prefix="notify-budget-"))
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with embedded.embedded_postgres(root) as server_url:
            parts = urlsplit(server_url)
            url = urlunsplit(parts._replace(path="/budget"))
            import psycopg2

            admin = psycopg2.connect(server_url)
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute("DROP DATABASE IF EXISTS budget")
                cur.execute("CREATE DATABASE budget")
            admin.close()
            apply_migrations(url)
            yield url, f"redis://127.0.0.1:{redis_port}/0", redis_proc.pid, embedded.postgres_data_dir(root)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(embedded.postgres_data_dir(root), ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def cluster_pids(data_dir: Path) -> list[int]:
    """The postmaster of this data directory and every process it started (backends, writers)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                pids.append(int(entry))
    return pids


# ---------------------------------------------------------------- floors


async def floors(database_url: str, redis_url: str, redis_pid: int, data_dir: Path, n: int = 2000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    redis = Redis.from_url(redis_url)
    await redis.ping()
    server0, client0, t0 = cpu_seconds(redis_pid), time.process_time(), time.perf_counter()
    for _ in range(n):
        await redis.ping()
    out["redis_round_trip"] = {
        "wall_us": (time.perf_counter() - t0) / n * 1e6,
        "client_cpu_us": (time.process_time() - client0) / n * 1e6,
        "server_cpu_us": (cpu_seconds(redis_pid) - server0) / n * 1e6,
    }
    await redis.aclose()

    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        await cur.execute("CREATE TABLE IF NOT EXISTS budget_floor (id bigint)")
        pids = cluster_pids(data_dir)
        server0 = sum(cpu_seconds(p) for p in pids)
        client0, t0 = time.process_time(), time.perf_counter()
        for i in range(n // 4):
            await cur.execute("INSERT INTO budget_floor VALUES (%s)", (i,))  # autocommit: one commit each
        count = n // 4
        out["postgres_commit"] = {
            "wall_us": (time.perf_counter() - t0) / count * 1e6,
            "client_cpu_us": (time.process_time() - client0) / count * 1e6,
            "server_cpu_us": (sum(cpu_seconds(p) for p in cluster_pids(data_dir)) - server0) / count * 1e6,
        }
        await cur.execute("DROP TABLE budget_floor")
    out["frame_write"] = await frame_write_floor()
    return out


async def frame_write_floor(n: int = 20000) -> dict[str, float]:
    """aiohttp's `send_str` of a 400-byte frame to a local client that reads it (server-side CPU)."""
    frame = json.dumps({"type": "notification", "data": {"notification_id": "0" * 36, "body": "x" * 300}})
    measured: dict[str, float] = {}
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        t0 = time.process_time()
        for _ in range(n):
            await ws.send_str(frame)
        measured["server_cpu_us"] = (time.process_time() - t0) / n * 1e6
        done.set()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    reader = subprocess.Popen(["python3", "-c", READER.format(port=port)])  # its CPU is not counted
    await asyncio.wait_for(done.wait(), 120)
    reader.kill()
    reader.wait(timeout=30)
    await runner.cleanup()
    return measured


# ---------------------------------------------------------------- a steady rate


async def measured_step(s: Session, users: list[str], rate: int, seconds: float, pg: list[int], redis_pid: int,
                        profile_dir: str | None) -> dict[str, Any]:
    count = int(rate * seconds)
    await s.clients.reset()
    seq0 = s.seq
    s.seq += count
    groups = {"producer": s.producers.pids, "worker": s.stack.worker_pids, "node": s.stack.server_pids,
              "postgres": pg, "redis": [redis_pid], "client": s.clients.pids}
    meter = CpuMeter(groups, dynamic_postgres=False).start()
    profilers = start_profilers(s.stack, profile_dir, f"budget-{rate}") if profile_dir else []
    sent = await s.producers.run(count=count, rate=rate, users=users, tag=s.tag, seq0=seq0)
    expected = sum(s.tabs_of.get(users[user_for_seq(q, len(users))], 0) for q in range(seq0, seq0 + count))
    await wait_frames(s.clients, expected)
    meter.stop()
    for p in profilers:
        stop_profiler(p)
    delivered = await s.clients.collect()
    us_per_event = {name: seconds_ * 1e6 / count for name, seconds_ in meter.seconds.items()}
    return {"rate": rate, "events": count, "producer_rate": sent["rate_achieved"], "wall_s": meter.wall_s,
            "frames": len(delivered.seq), "expected_frames": expected, "us_per_event": us_per_event}


def stage_split(profile_dir: str, label: str, role: str, stages: dict[str, list[str]]) -> dict[str, float]:
    """{stage: share of the role's busy samples} over every profile file of that role and step."""
    totals: dict[str, float] = dict.fromkeys(stages, 0.0)
    samples = 0
    for path in Path(profile_dir).glob(f"notify-budget-{label}-{role}-*.txt"):
        busy, rows = summarise(path)
        samples += busy
        for stage, functions in stages.items():
            share = max((pct for name, pct, _self in rows for f in functions if name.endswith(f)), default=0.0)
            totals[stage] += busy * share / 100.0
    return {stage: (v / samples if samples else 0.0) for stage, v in totals.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"rates": args.rates, "seconds": args.seconds, "connections": args.connections,
                              "runs": []}
    with private_stores() as (database_url, redis_url, redis_pid, data_dir):
        result["floors"] = await floors(database_url, redis_url, redis_pid, data_dir)
        print("floors:", json.dumps(result["floors"], indent=1), flush=True)
        for run_index in range(args.runs):
            with Processes() as children:
                from bench.load import start_stack

                stack = await start_stack(children, "notify", database_url, redis_url, workers=2)
                clients = ClientPool("notify", 2)
                producers = ProducerPool("notify", redis_url, 2)
                s = Session(stack, clients, producers)
                try:
                    users = [f"b{run_index}-{i}" for i in range(args.connections // 2)]
                    await s.open(users, 2, 100)
                    await measured_step(s, users, 100, 3, cluster_pids(data_dir), redis_pid, None)  # warm-up
                    for rate in args.rates:
                        profile_dir = args.keep_profiles or tempfile.mkdtemp(prefix="notify-budget-prof-")
                        step = await measured_step(s, users, rate, args.seconds, cluster_pids(data_dir), redis_pid,
                                                   profile_dir)
                        step["worker_stages"] = stage_split(profile_dir, str(rate), "worker", WORKER_STAGES)
                        step["node_stages"] = stage_split(profile_dir, str(rate), "server", NODE_STAGES)
                        step["run"] = run_index
                        result["runs"].append(step)
                        print(json.dumps(step), flush=True)
                        if not args.keep_profiles:
                            shutil.rmtree(profile_dir, ignore_errors=True)
                finally:
                    await clients.shutdown()
                    await producers.shutdown()
    return result


def table(result: dict[str, Any]) -> str:
    """The markdown table of docs/benchmarks.md: median µs per event of each group and stage."""
    lines = ["| where | " + " | ".join(f"µs/event at {r}/s" for r in result["rates"]) + " |",
             "|---|" + "---|" * len(result["rates"])]

    def median_of(rate: int, get: Any) -> float:
        values = [get(step) for step in result["runs"] if step["rate"] == rate]
        return statistics.median(values) if values else float("nan")

    rows: list[tuple[str, Any]] = [("producer (`enqueue_event`, 2 processes)", lambda s: s["us_per_event"]["producer"])]
    rows.append(("worker, in all (2 processes)", lambda s: s["us_per_event"]["worker"]))
    for stage in WORKER_STAGES:
        rows.append((f"— {stage}", lambda s, st=stage: s["us_per_event"]["worker"] * s["worker_stages"][st]))
    rows.append(("— the rest (event loop, wake-ups, metrics, logging)", lambda s: s["us_per_event"]["worker"] * (
        1 - sum(s["worker_stages"].values()))))
    rows.append(("Postgres (every process of its cluster)", lambda s: s["us_per_event"]["postgres"]))
    rows.append(("Redis", lambda s: s["us_per_event"]["redis"]))
    rows.append(("node, in all", lambda s: s["us_per_event"]["node"]))
    for stage in NODE_STAGES:
        rows.append((f"— {stage}", lambda s, st=stage: s["us_per_event"]["node"] * s["node_stages"][st]))
    rows.append(("— the rest (event loop, heartbeat, presence refresh)", lambda s: s["us_per_event"]["node"] * (
        1 - sum(s["node_stages"].values()))))
    rows.append(("load client (2 tabs per event; not the service)", lambda s: s["us_per_event"]["client"]))
    rows.append(("**service total** (worker + Postgres + Redis + node)", lambda s: sum(
        s["us_per_event"][k] for k in ("worker", "postgres", "redis", "node"))))
    rows.append(("**with the producer**", lambda s: sum(
        s["us_per_event"][k] for k in ("producer", "worker", "postgres", "redis", "node"))))
    rows.append(("rest of the machine meanwhile (other work; not ours)", lambda s: s["us_per_event"]["others"]))
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(f"{median_of(r, get):,.0f}" for r in result["rates"]) + " |")
    f = result["floors"]
    lines += [
        "",
        "| floor on this machine | wall | CPU |",
        "|---|---|---|",
        f"| Redis round trip (PING, redis-py asyncio) | {f['redis_round_trip']['wall_us']:.0f} µs | client "
        f"{f['redis_round_trip']['client_cpu_us']:.0f} µs + server {f['redis_round_trip']['server_cpu_us']:.0f} µs |",
        f"| Postgres commit (one-row INSERT, synchronous_commit on) | {f['postgres_commit']['wall_us']:.0f} µs | "
        f"client {f['postgres_commit']['client_cpu_us']:.0f} µs"
        f" + server {f['postgres_commit']['server_cpu_us']:.0f} µs |",
        f"| WebSocket frame write (aiohttp `send_str`, 0.4 KB) | — | {f['frame_write']['server_cpu_us']:.1f} µs |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="500,2000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", default="")
    parser.add_argument("--keep-profiles", default="", metavar="DIR", help="keep the py-spy profiles here")
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    result = asyncio.run(run(args))
    text = table(result)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
