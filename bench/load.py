"""Load benchmark: notify-server against python-socketio (AsyncRedisManager) and Node.js socket.io
(@socket.io/redis-adapter) under the same load.

One invocation runs, for each run r = 1…R and each system (interleaved, so all see the same machine
noise):
- main:    a fresh stack (notify: 1 `serve` node + 1 `worker`; sio: 1 `bench.peer_socketio` node; node:
           1 `node bench/peer_node/server.js`),
           C connections (C/2 users × 2 tabs), time to open them and server RSS per connection; then a
           rate ladder (each step: events at R/s for D s, each to one user, both tabs must get it):
           delivered/expected, p50/p95/p99/max enqueue→frame latency, CPU split; then a flood (N events
           as fast as one producer can enqueue); then the fan-out (the C connections are replaced by
           2,000 single-tab users; one event to 10,000 users including them).
- memory:  a fresh stack and M idle connections (M/2 users × 2 tabs): server RSS per connection.
- scale:   notify only: the flood with 2 workers and/or 2 nodes (tabs of a user on different nodes).

`--serve-processes N` runs each notify node as `serve --processes N` (N node processes on one port,
issue 21): server CPU and RSS are then those of its N children.

Processes: client (2 processes, raw WebSocket protocol on uvloop), producer (2 processes, uvloop), servers, workers,
Redis and Postgres are all measured (CPU from /proc/<pid>/stat). Results go to a JSON file that
`bench.report` turns into the table and the plot of docs/benchmarks.md.

    .venv/bin/python -m bench.load [--runs 3] [--out bench/results/latest.json] [--quick] [--systems notify,sio,node]

The node peer needs its packages: `npm ci --prefix bench/peer_node` (scripts/bench.sh does it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiopg

from bench.loadclient import ClientPool, Deliveries, client_env_ok
from bench.peer_socketio import make_token
from bench.procstats import CpuMeter, redis_pids, rss_kb, wait_quiet
from bench.producer import ProducerPool, user_for_seq
from bench.stack import Processes, env_for, node_peer_argv, node_peer_versions, percentile, stores
from tests.processes import Process, free_port, wait_http_ok

SYSTEMS = ("notify", "sio", "node")
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the system under test


@dataclass
class Stack:
    protocol: str
    ports: list[int]
    servers: list[Process]
    workers: list[Process] = field(default_factory=list)
    database_url: str = ""
    redis_url: str = ""
    secret: str = ""
    tokens: dict[str, str] = field(default_factory=dict)  # notify: user id -> session token

    @property
    def server_pids(self) -> list[int]:
        """The node processes: each server itself, or the children of a `serve --processes N` parent."""
        pids = []
        for server in self.servers:
            children = child_pids(server.popen.pid)
            pids += children or [server.popen.pid]
        return pids

    @property
    def worker_pids(self) -> list[int]:
        return [w.popen.pid for w in self.workers]

    async def add_users(self, users: Sequence[str]) -> None:
        """notify: one session per user (its tabs share it, as a browser's tabs share the cookie),
        inserted in bulk (sha256 of the token, as SessionStore.create stores it)."""
        if self.protocol != "notify":
            return
        new = [u for u in users if u not in self.tokens]
        tokens = {u: secrets.token_urlsafe(24) for u in new}
        async with aiopg.connect(self.database_url) as conn, conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO sessions (token_hash, user_id, expires_at)"
                " SELECT h, u, now() + interval '2 hours' FROM unnest(%s::text[], %s::text[]) AS t(h, u)",
                ([hashlib.sha256(tokens[u].encode()).hexdigest() for u in new], new),
            )
        self.tokens.update(tokens)

    def targets(self, users: Sequence[str], tabs: int) -> list[tuple[str, str | None]]:
        """(url, sio auth) per connection: tab k of user j goes to node (j*tabs + k) % nodes, so with
        two nodes and two tabs, every user has one tab on each node."""
        out = []
        for j, user in enumerate(users):
            for k in range(tabs):
                port = self.ports[(j * tabs + k) % len(self.ports)]
                if self.protocol == "notify":
                    out.append((f"http://127.0.0.1:{port}/ws/notifications?token={self.tokens[user]}", None))
                else:
                    out.append((f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
                                json.dumps({"token": make_token(self.secret, user)})))
        return out

    async def pg_transactions(self) -> int | None:
        """Committed transactions of this database so far (each autocommit query is one)."""
        if self.protocol != "notify":
            return None
        async with aiopg.connect(self.database_url) as conn, conn.cursor() as cur:
            await cur.execute("SELECT pg_stat_clear_snapshot()")
            await cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            (n,) = await cur.fetchone()
        return int(n)

    def server_rss_kb(self) -> int:
        return sum(rss_kb(pid) for pid in self.server_pids)


# ---- web push (issue 20): --web-push runs notify's processes with web push on (NOTIFY_WEB_PUSH_*)
NOTIFY_EXTRA_ENV: dict[str, str] = {}


def web_push_env(key_dir: str) -> dict[str, str]:
    """Web push on, with a key made for the run: under `when: away` the pipeline queues only recipients
    its WebSocket push did not reach, and every worker runs its sender loop."""
    from notify_server.core.vapid_keys import create_key_file

    key_file = str(Path(key_dir) / "vapid.pem")
    create_key_file(key_file)
    return {"NOTIFY_WEB_PUSH_ENABLED": "true", "NOTIFY_WEB_PUSH_VAPID_PRIVATE_KEY_FILE": key_file,
            "NOTIFY_WEB_PUSH_SUBJECT": "mailto:bench@example.com"}
# ---- end web push


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


async def wait_node_processes(port: int, server: Process, count: int, timeout_s: float = 60.0) -> None:
    """Until `count` distinct node ids answered /readyz on the shared port (each request a new
    connection: the kernel hands each to one of the processes)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        while len(seen) < count:
            if time.monotonic() > deadline or server.popen.poll() is not None:
                raise SystemExit(f"{count} node processes not up on port {port}:\n{server.output()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
                    if ready.status == 200:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as health:
                            seen.add((await health.json())["node_id"])
            await asyncio.sleep(0.05)


async def start_stack(children: Processes, protocol: str, database_url: str, redis_url: str,
                      nodes: int = 1, workers: int = 1, extra_env: dict[str, str] | None = None,
                      serve_processes: int = 1) -> Stack:
    ports = [free_port() for _ in range(nodes)]
    if protocol == "notify":
        env = env_for(database_url, redis_url, **{**NOTIFY_EXTRA_ENV, **(extra_env or {})})
        tag = uuid.uuid4().hex[:6]
        group = ["--processes", str(serve_processes)] if serve_processes > 1 else []
        servers = [children.start(f"node{i}", ["serve", "--port", str(p), *group],
                                  dict(env, NOTIFY_SERVER_NODE_ID=f"bench-{tag}-{i}"))
                   for i, p in enumerate(ports)]
        worker_procs = [children.start(f"worker{i}", ["worker"], env) for i in range(workers)]
        stack = Stack(protocol, ports, servers, worker_procs, database_url, redis_url)
        for port, server in zip(ports, servers, strict=False):
            await wait_http_ok(f"http://127.0.0.1:{port}/readyz", server)
            if serve_processes > 1:
                await wait_node_processes(port, server, serve_processes)
        await asyncio.sleep(1.0)  # workers connected and polling
        for w in worker_procs:
            if w.popen.poll() is not None:
                raise SystemExit(f"worker exited:\n{w.output()}")
        return stack
    secret = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    if protocol == "node":
        # The adapter's channel prefix ("socket.io" by default), unique per stack like the sio channel:
        # Redis pub/sub ignores the db number, so two stacks on one Redis would hear each other.
        channel = f"socket.io-bench-{uuid.uuid4().hex[:8]}"
        env["NODE_ENV"] = "production"
        servers = [children.start_command(f"node{i}", node_peer_argv(p, redis_url, secret, channel), env)
                   for i, p in enumerate(ports)]
    else:
        channel = f"bench-sio-{uuid.uuid4().hex[:8]}"
        servers = [children.start_module(f"sio{i}", "bench.peer_socketio", env,
                                         ["--port", str(p), "--redis-url", redis_url, "--channel", channel,
                                          "--secret", secret])
                   for i, p in enumerate(ports)]
    stack = Stack(protocol, ports, servers, [], database_url, redis_url, secret)
    stack.tokens = {"__channel__": channel}
    for port, server in zip(ports, servers, strict=False):
        await wait_http_ok(f"http://127.0.0.1:{port}/healthz", server)
    await asyncio.sleep(0.5)  # the pub/sub listener (the adapter's psubscribe) is subscribed
    return stack


def producer_for(stack: Stack, processes: int) -> ProducerPool:
    return ProducerPool(stack.protocol, stack.redis_url, processes, channel=stack.tokens.get("__channel__", ""))


def cpu_groups(stack: Stack, clients: ClientPool, producers: ProducerPool) -> dict[str, list[int]]:
    return {"server": stack.server_pids, "worker": stack.worker_pids, "redis": redis_pids(),
            "client": clients.pids, "producer": producers.pids}


# ---------------------------------------------------------------- measuring


def latency_stats(latencies_s: Sequence[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ms = sorted(x * 1000 for x in latencies_s)
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
            "max_ms": ms[-1]}


def analyse(d: Deliveries, seq0: int, count: int, users: Sequence[str], conn_user: dict[int, str],
            tabs_of: dict[str, int], started_at: float, fanout_users: set[str] | None = None) -> dict[str, Any]:
    """Delivered/expected (each (event, tab) pair once, to the right user), duplicates, latency of each
    delivery, deliveries/s and events/s (until the last delivery)."""
    seen: set[tuple[int, int]] = set()
    latencies: list[float] = []
    wrong = dup = 0
    last = first = 0.0
    n_users = len(users)
    for seq, conn, lat, at in zip(d.seq, d.conn, d.latency_s, d.received_at, strict=False):
        if not seq0 <= seq < seq0 + count:
            continue  # a late frame of an earlier step
        user = conn_user.get(conn)
        target_ok = (user in fanout_users) if fanout_users is not None else (
            user == users[user_for_seq(seq, n_users)])
        if not target_ok:
            wrong += 1
            continue
        if (seq, conn) in seen:
            dup += 1
            continue
        seen.add((seq, conn))
        latencies.append(lat)
        last = max(last, at)
        first = at if not first else min(first, at)
    if fanout_users is not None:
        expected = sum(tabs_of.get(u, 0) for u in fanout_users)
    else:
        expected = sum(tabs_of.get(users[user_for_seq(s, n_users)], 0) for s in range(seq0, seq0 + count))
    span = (last - started_at) if last else 0.0
    return {
        "expected": expected, "delivered": len(seen), "delivered_ratio": len(seen) / expected if expected else None,
        "duplicates": dup, "wrong_user": wrong, **latency_stats(latencies),
        "deliveries_per_s": len(seen) / span if span > 0 else None,
        "events_per_s": count / span if span > 0 and len(seen) == expected else None,
        "span_s": span, "first_frame_after_s": (first - started_at) if first else None,
        "push_phase_s": (last - first) if first else None,
    }


async def wait_frames(clients: ClientPool, expected: int, stall_s: float = 5.0, cap_s: float = 60.0) -> None:
    """Until `expected` frames are in, or nothing arrived for stall_s, or cap_s passed."""
    deadline = time.monotonic() + cap_s
    last_frames, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = (await clients.count())["frames"]
        if got >= expected:
            return
        if got != last_frames:
            last_frames, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            return
        await asyncio.sleep(0.05)


class Session:
    """One stack with its clients and producer; connections opened through it are remembered."""

    quiet_pct = 50.0  # wait for the rest of the machine to use less than this (% of a core) ...
    quiet_wait_s = 20.0  # ... at most this long, before each measured step

    def __init__(self, stack: Stack, clients: ClientPool, producers: ProducerPool) -> None:
        self.stack, self.clients, self.producers = stack, clients, producers
        self.conn_user: dict[int, str] = {}
        self.tabs_of: dict[str, int] = {}
        self.seq = 0
        self.tag = uuid.uuid4().hex[:6]

    async def quiet(self) -> float:
        own = self.stack.server_pids + self.stack.worker_pids + self.clients.pids + (
            self.producers.pids if self.producers is not None else [])
        return await asyncio.to_thread(wait_quiet, own, self.quiet_pct, 1.0, self.quiet_wait_s)

    async def open(self, users: Sequence[str], tabs: int, concurrency: int,
                   profile: str | None = None) -> dict[str, Any]:
        await self.stack.add_users(users)
        targets = self.stack.targets(users, tabs)
        others_before = await self.quiet()
        xacts0 = await self.stack.pg_transactions()
        profilers = start_profilers(self.stack, profile, f"open{len(targets)}") if profile else []
        meter = CpuMeter({"client": self.clients.pids, "server": self.stack.server_pids, "redis": redis_pids()}).start()
        result = await self.clients.open(targets, concurrency=concurrency)
        result["cpu_pct"] = meter.stop()
        for p in profilers:
            stop_profiler(p)
        for i, (user, _) in enumerate((u, k) for u in users for k in range(tabs)):
            self.conn_user[result["first_index"] + i] = user
        for user in users:
            self.tabs_of[user] = self.tabs_of.get(user, 0) + tabs
        result["others_before_pct"] = others_before
        if result["opened"] != result["requested"]:
            print(f"  ! opened {result['opened']}/{result['requested']}: {result['errors']}", flush=True)
        if xacts0 is not None:
            await asyncio.sleep(1.5)  # backends flush their statistics about once a second
            # minus the 2 transactions of this probe itself
            result["pg_transactions"] = (await self.stack.pg_transactions() or 0) - xacts0 - 2
        return result

    async def close_all(self) -> None:
        await self.clients.close_connections()
        self.tabs_of.clear()
        self.conn_user.clear()

    async def step(self, users: Sequence[str], rate: float, count: int, fanout: bool = False,
                   profile: str | None = None, stored_poll: bool = False) -> dict[str, Any]:
        await self.clients.reset()
        others_before = await self.quiet()
        seq0 = self.seq
        self.seq += count
        meter = CpuMeter(cpu_groups(self.stack, self.clients, self.producers)).start()
        label = "fanout" if fanout else f"{rate or 'flood'}"
        profilers = start_profilers(self.stack, profile, label, {"producer": self.producers.pids}) if profile else []
        stored_task = asyncio.create_task(self._poll_stored(f"{self.tag}-{seq0}", len(users))) \
            if stored_poll and self.stack.protocol == "notify" else None
        sent = await self.producers.run(count=count, rate=rate, users=users, tag=self.tag, seq0=seq0,
                                        recipients_per_event=len(users) if fanout else 1)
        if fanout:
            expected = sum(self.tabs_of.get(u, 0) for u in users)
        else:
            expected = sum(self.tabs_of.get(users[user_for_seq(s, len(users))], 0) for s in range(seq0, seq0 + count))
        await wait_frames(self.clients, expected)
        stored_s = None
        if stored_task is not None:
            stored_at = await stored_task
            stored_s = stored_at - sent["started_at"] if stored_at else None
        cpu = meter.stop()
        for p in profilers:
            stop_profiler(p)
        d = await self.clients.collect()
        result = analyse(d, seq0, count, users, self.conn_user, self.tabs_of, sent["started_at"],
                         fanout_users=set(users) if fanout else None)
        result.update(rate_offered=rate, events=count, producer_rate=sent["rate_achieved"],
                      enqueue_call_ms=sent["enqueue_call_ms"],
                      producer_behind_max_s=sent["behind_max_s"], producer_errors=sent["errors"],
                      cpu_pct=cpu, wall_s=meter.wall_s, unexpected_closes=d.unexpected_closes,
                      others_before_pct=others_before)
        if stored_s is not None:
            result["all_rows_stored_s"] = stored_s
        return result

    async def drain_step(self, users: Sequence[str], count: int, profile: str | None = None) -> dict[str, Any]:
        """notify only: the pipeline's own capacity, without the producer competing for the CPU. The
        workers are paused (SIGSTOP), `count` events enqueued, the workers resumed; the clock runs from
        the resume to the last frame (every tab of each event's user)."""
        import signal

        await self.clients.reset()
        others_before = await self.quiet()
        seq0 = self.seq
        self.seq += count
        for pid in self.stack.worker_pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            sent = await self.producers.run(count=count, rate=0, users=users, tag=self.tag, seq0=seq0)
        finally:
            await asyncio.sleep(0.5)
            meter = CpuMeter(cpu_groups(self.stack, self.clients, self.producers)).start()
            profilers = start_profilers(self.stack, profile, "drain") if profile else []
            resumed_at = time.time()
            for pid in self.stack.worker_pids:
                os.kill(pid, signal.SIGCONT)
        expected = sum(self.tabs_of.get(users[user_for_seq(s, len(users))], 0) for s in range(seq0, seq0 + count))
        sampling = asyncio.Event()
        waits_task = asyncio.create_task(self._sample_pg_waits(sampling))
        await wait_frames(self.clients, expected)
        sampling.set()
        pg_waits = await waits_task
        cpu = meter.stop()
        for p in profilers:
            stop_profiler(p)
        d = await self.clients.collect()
        result = analyse(d, seq0, count, users, self.conn_user, self.tabs_of, resumed_at)
        result.update(events=count, producer_errors=sent["errors"], cpu_pct=cpu, wall_s=meter.wall_s,
                      unexpected_closes=d.unexpected_closes, others_before_pct=others_before, pg_waits=pg_waits)
        return result

    async def _sample_pg_waits(self, done: asyncio.Event, every_s: float = 0.01) -> dict[str, Any]:
        """What this database's active backends are doing, sampled until `done` is set: {"samples": n,
        "<wait_event_type>:<wait_event>" or "cpu": backend-samples}. Lock waits of the workers show
        here (two batches updating the same unread counters). Stopped by an event, not a cancel: aiopg's
        wait_for can swallow a cancel (Python 3.11, gh-86296), and this loop then never ended."""
        counts: dict[str, int] = {}
        samples = 0
        async with aiopg.connect(self.stack.database_url) as conn, conn.cursor() as cur:
            while not done.is_set():
                await cur.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'cpu'), count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"
                    " GROUP BY 1")
                for key, n in await cur.fetchall():
                    counts[key] = counts.get(key, 0) + int(n)
                samples += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(done.wait(), every_s)
        return {"samples": samples, **dict(sorted(counts.items(), key=lambda kv: -kv[1]))}

    async def _poll_stored(self, event_id: str, rows: int, cap_s: float = 60.0) -> float | None:
        """When all of a fan-out event's rows are visible (polled every 5 ms on its own connection)."""
        deadline = time.monotonic() + cap_s
        async with aiopg.connect(self.stack.database_url) as conn, conn.cursor() as cur:
            while time.monotonic() < deadline:
                await cur.execute("SELECT count(*) FROM notifications WHERE event_id = %s", (event_id,))
                (n,) = await cur.fetchone()
                if n >= rows:
                    return time.time()
                await asyncio.sleep(0.005)
        return None


def start_profilers(stack: Stack, directory: str, label: str,
                    others: dict[str, list[int]] | None = None) -> list[subprocess.Popen[bytes]]:
    """py-spy record (raw collapsed stacks) of every server and worker process (and `others`, e.g. the
    producers) for this step."""
    out = []
    Path(directory).mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    for role, pids in (("server", stack.server_pids), ("worker", stack.worker_pids), *(others or {}).items()):
        for pid in pids:
            path = Path(directory) / f"{stack.protocol}-{label}-{role}-{pid}.txt"
            out.append(subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "-f", "raw", "-r", "200",
                                         "-o", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    return out


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------- scenarios


async def scenario_main(protocol: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "main", "system": protocol, "run": run}
    users = [f"u{i}" for i in range(args.connections // 2)]
    with stores() as (database_url, redis_url), Processes() as children:
        stack = await start_stack(children, protocol, database_url, redis_url,
                                  serve_processes=args.serve_processes if protocol == "notify" else 1)
        clients = ClientPool(protocol, args.client_processes)
        producers = producer_for(stack, args.producers)
        s = Session(stack, clients, producers)
        try:
            await s.open([f"w{i}" for i in range(10)], 2, args.open_concurrency)  # warm-up, kept open
            await asyncio.sleep(1.0)
            rss0 = stack.server_rss_kb()
            opened = await s.open(users, 2, args.open_concurrency, profile=args.profile_dir)
            await asyncio.sleep(2.0)
            rss1 = stack.server_rss_kb()
            out["open"] = {**opened, "rss_before_kb": rss0, "rss_after_kb": rss1,
                           "rss_per_conn_kb": (rss1 - rss0) / max(1, opened["opened"])}
            print(f"  {protocol} run {run}: opened {opened['opened']}/{opened['requested']} in "
                  f"{opened['open_s']:.2f}s, RSS {rss0 / 1024:.0f}->{rss1 / 1024:.0f} MiB "
                  f"({out['open']['rss_per_conn_kb']:.1f} KiB/conn)", flush=True)
            await s.step(users, 50, 50)  # warm-up: caches, plans, pools
            out["ladder"] = []
            for rate in args.rates:
                step_s = args.long_step_s if rate in args.long_rates else args.step_s
                r = await s.step(users, rate, int(rate * step_s),
                                 profile=args.profile_dir if rate in args.profile_rates else None)
                out["ladder"].append(r)
                print(f"  {protocol} run {run}: {rate:>5}/s -> delivered {r['delivered']}/{r['expected']}, "
                      f"p50 {_ms(r['p50_ms'])} p99 {_ms(r['p99_ms'])} max {_ms(r['max_ms'])}, producer "
                      f"{r['producer_rate']:.0f}/s, cpu {_cpu(r['cpu_pct'])}", flush=True)
                if r["delivered"] < r["expected"] * 0.5 or (r["p99_ms"] or 0) > 20_000:
                    print("  (stopping the ladder: far past saturation)", flush=True)
                    break
            if "flood" in args.skip:
                return out
            r = await s.step(users, 0, args.flood_events, profile=args.profile_dir)
            out["flood"] = r
            print(f"  {protocol} run {run}: flood {args.flood_events} -> delivered {r['delivered']}/{r['expected']} "
                  f"in {r['span_s']:.2f}s = {_num(r['events_per_s'])} events/s, producer {r['producer_rate']:.0f}/s, "
                  f"cpu {_cpu(r['cpu_pct'])}", flush=True)
            if protocol == "notify":
                r = await s.drain_step(users, args.flood_events, profile=args.profile_dir)
                out["drain"] = r
                _print_drain(f"{protocol} run {run}", args.flood_events, r)

            # fan-out: 2,000 single-tab users connected out of 10,000 recipients
            await s.close_all()
            await asyncio.sleep(1.0)
            fan_users = [f"f{i}" for i in range(args.fanout_recipients)]
            connected = fan_users[:: args.fanout_recipients // args.fanout_connected][: args.fanout_connected]
            fo_open = await s.open(connected, 1, args.open_concurrency)
            await asyncio.sleep(1.0)
            r = await s.step(fan_users, 0, 1, fanout=True, stored_poll=True,
                             profile=args.profile_dir if args.profile_dir else None)
            r["open"] = fo_open
            out["fanout"] = r
            print(f"  {protocol} run {run}: fan-out to {len(fan_users)} ({len(connected)} connected): rows stored "
                  f"{_s(r.get('all_rows_stored_s'))}, all tabs served {_s(r['span_s'])}, first frame "
                  f"{_s(r['first_frame_after_s'])}, delivered {r['delivered']}/{r['expected']}, push phase "
                  f"{_s(r['push_phase_s'])}", flush=True)
        finally:
            await clients.shutdown()
            await producers.shutdown()
            out["logs"] = str(children.logs)
            _check_logs(children, out)
    return out


async def scenario_memory(protocol: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "memory", "system": protocol, "run": run, "connections": args.memory_connections}
    with stores() as (database_url, redis_url), Processes() as children:
        stack = await start_stack(children, protocol, database_url, redis_url, workers=0,
                                  serve_processes=args.serve_processes if protocol == "notify" else 1)
        clients = ClientPool(protocol, args.client_processes)
        s = Session(stack, clients, None)  # type: ignore[arg-type]  # no events here
        try:
            await s.open([f"w{i}" for i in range(10)], 2, args.open_concurrency)
            await asyncio.sleep(1.0)
            rss0 = stack.server_rss_kb()
            opened = await s.open([f"m{i}" for i in range(args.memory_connections // 2)], 2, args.open_concurrency,
                                  profile=args.profile_dir)
            cpu = opened["cpu_pct"]
            await asyncio.sleep(3.0)
            rss1 = stack.server_rss_kb()
            out.update(open=opened, cpu_pct=cpu, rss_before_kb=rss0, rss_after_kb=rss1,
                       rss_per_conn_kb=(rss1 - rss0) / max(1, opened["opened"]))
            print(f"  {protocol} run {run}: {opened['opened']}/{opened['requested']} idle connections in "
                  f"{opened['open_s']:.2f}s; server RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB = "
                  f"{out['rss_per_conn_kb']:.1f} KiB per connection; cpu {_cpu(cpu)}", flush=True)
        finally:
            await clients.shutdown()
            _check_logs(children, out)
    return out


async def scenario_scale(run: int, workers: int, nodes: int, args: argparse.Namespace,
                         protocol: str = "notify") -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "scale", "system": protocol, "run": run, "workers": workers, "nodes": nodes}
    users = [f"u{i}" for i in range(args.connections // 2)]
    with stores() as (database_url, redis_url), Processes() as children:
        stack = await start_stack(children, protocol, database_url, redis_url, nodes=nodes, workers=workers)
        clients = ClientPool(protocol, args.client_processes)
        producers = producer_for(stack, args.producers)
        s = Session(stack, clients, producers)
        try:
            out["open"] = await s.open(users, 2, args.open_concurrency)
            await s.step(users, 50, 50)
            r = await s.step(users, 0, args.flood_events)
            out["flood"] = r
            print(f"  {protocol} {workers} worker(s), {nodes} node(s), run {run}: flood {args.flood_events} -> "
                  f"delivered {r['delivered']}/{r['expected']} in {r['span_s']:.2f}s = {_num(r['events_per_s'])} "
                  f"events/s (producer {r['producer_rate']:.0f}/s), cpu {_cpu(r['cpu_pct'])}", flush=True)
            r = await s.drain_step(users, args.flood_events)
            out["drain"] = r
            _print_drain(f"{protocol} {workers} worker(s), {nodes} node(s), run {run}", args.flood_events, r)
        finally:
            await clients.shutdown()
            await producers.shutdown()
            _check_logs(children, out)
    return out


def _print_drain(what: str, events: int, r: dict[str, Any]) -> None:
    print(f"  {what}: drain of {events} queued events -> delivered {r['delivered']}/{r['expected']} in "
          f"{r['span_s']:.2f}s = {_num(r['events_per_s'])} events/s, cpu {_cpu(r['cpu_pct'])}; postgres "
          f"backend samples: {r.get('pg_waits')}", flush=True)


def _check_logs(children: Processes, out: dict[str, Any]) -> None:
    """Keep the errors the servers and workers logged (they run at WARNING)."""
    lines = []
    for proc in children.started:
        text = proc.output() if proc.log_path.exists() else ""
        for line in text.splitlines():
            if any(w in line for w in ("ERROR", "Traceback", "WARNING", "Error")):
                lines.append(f"{proc.log_path.name}: {line[:300]}")
    out["log_problems"] = lines[:40]
    if lines:
        print(f"  ! {len(lines)} warning/error line(s) in the logs, e.g. {lines[0]}", flush=True)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}s"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _cpu(cpu: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.0f}%" for k, v in cpu.items())


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {"python": sys.version.split()[0], "cpus": os.cpu_count(), "platform": platform.platform(),
            **{name: version(name) for name in ("aiohttp", "python-socketio", "python-engineio", "redis", "arq",
                                                "aiopg", "uvloop")},
            **node_peer_versions(),
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                  text=True).stdout.strip(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--scenarios", default="memory,main")
    parser.add_argument("--connections", type=int, default=2000, help="C of the main runs (C/2 users x 2 tabs)")
    parser.add_argument("--memory-connections", type=int, default=10_000)
    parser.add_argument("--rates", default="250,500,1000,2000,3000")
    parser.add_argument("--step-s", type=float, default=5.0, help="seconds of each ladder step")
    parser.add_argument("--long-rates", default="500,2000",
                        help="ladder rates measured for --long-step-s instead (the targets' rates)")
    parser.add_argument("--long-step-s", type=float, default=30.0,
                        help="30 s = one heartbeat interval: every such step contains exactly one ping sweep")
    parser.add_argument("--flood-events", type=int, default=6000)
    parser.add_argument("--fanout-recipients", type=int, default=10_000)
    parser.add_argument("--fanout-connected", type=int, default=2000)
    parser.add_argument("--scale", default="2x1,1x2,2x2", help="notify workers x nodes for the scale flood")
    parser.add_argument("--producers", type=int, default=2,
                        help="producer processes sharing the offered rate (one notify producer tops out near "
                             "1,400 enqueues/s here)")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--open-concurrency", type=int, default=50, help="connects in flight per client process")
    parser.add_argument("--profile-dir", default=None, help="py-spy record servers/workers into this directory")
    parser.add_argument("--profile-rates", default="", help="ladder rates to profile (with --profile-dir)")
    parser.add_argument("--quiet-pct", type=float, default=50.0,
                        help="before each step, wait until other processes use less than this %% of a core")
    parser.add_argument("--quiet-wait-s", type=float, default=10.0, help="... but at most this long")
    parser.add_argument("--serve-processes", type=int, default=1,
                        help="notify: each node is `serve --processes N` on one port (issue 21)")
    parser.add_argument("--skip", default="", help="main scenario: `flood` ends it after the ladder (no flood, "
                                                   "drain or fan-out)")
    parser.add_argument("--quick", action="store_true", help="1 run, short steps (a smoke test)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--web-push", action="store_true", help="notify with web push on (issue 20)")
    args = parser.parse_args()
    if args.web_push:
        NOTIFY_EXTRA_ENV.update(web_push_env(tempfile.mkdtemp(prefix="notify-bench-vapid-")))
    args.rates = [int(r) for r in args.rates.split(",") if r]
    args.long_rates = [int(r) for r in args.long_rates.split(",") if r]
    args.profile_rates = {int(r) for r in args.profile_rates.split(",") if r}
    args.skip = {part for part in args.skip.split(",") if part}
    if args.quick:
        args.runs, args.step_s, args.long_step_s, args.flood_events, args.memory_connections = 1, 3.0, 3.0, 2000, 2000
    systems = [s for s in args.systems.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    client_env_ok()
    Session.quiet_pct, Session.quiet_wait_s = args.quiet_pct, args.quiet_wait_s

    results: dict[str, Any] = {"machine": machine(), "args": {k: (sorted(v) if isinstance(v, set) else v)
                                                              for k, v in vars(args).items()},
                               "command": " ".join(sys.argv), "results": []}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out_path.write_text(json.dumps(results, indent=1, default=str))

    started = time.monotonic()
    for run in range(1, args.runs + 1):
        if "memory" in scenarios:
            for system in systems:
                print(f"[memory] {system} run {run}", flush=True)
                results["results"].append(await scenario_memory(system, run, args))
                save()
        if "main" in scenarios:
            for system in systems:
                print(f"[main] {system} run {run}", flush=True)
                results["results"].append(await scenario_main(system, run, args))
                save()
        if "scale" in scenarios and "notify" in systems:
            for spec in (s for s in args.scale.split(",") if s):
                workers, nodes = (int(x) for x in spec.split("x"))
                print(f"[scale] notify {workers} worker(s) x {nodes} node(s) run {run}", flush=True)
                results["results"].append(await scenario_scale(run, workers, nodes, args))
                save()
    results["elapsed_s"] = time.monotonic() - started
    save()
    print(f"done in {results['elapsed_s']:.0f}s -> {out_path}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
