"""Fail-overs for real (issue 21): a Sentinel promotes the Redis replica, a Postgres standby is promoted.

Each test runs the real commands — two `serve` nodes and two `worker` processes — against replicated
stores of its own (tests/replicated.py: a Redis primary, a replica and three Sentinels; a Postgres
primary and a streaming standby), with one open tab per user and a producer sending a steady flow of
events (retrying each call that fails, with the same event id, as a producer must). The primary is then
taken away under that flow. What must hold: every event the producer had acknowledged is stored exactly
once and reaches its tab; no process exits; the tabs stay open or reconnect by themselves. The figures
(promotion, the longest silence at the tabs, events lost) are printed (`-s`) and written up in
docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg2
import pytest
from aiohttp import WSMsgType

from notify_server.auth.revocations import publish_revocation
from notify_server.core.redis_client import redis_client
from notify_server.core.settings import DatabaseSettings, Settings
from notify_server.ingest.producer import EventProducer
from notify_server.storage.db import Database
from notify_server.storage.migrations import apply_migrations
from notify_server.storage.sessions import SessionStore, hash_token
from tests.processes import REPO_ROOT, Process, free_port, wait_http_ok, wait_output
from tests.replicated import MASTER_NAME, PostgresPair, SentinelRedis

pytestmark = pytest.mark.slow

USERS = 20
RATE = 50.0  # events per second
BEFORE_S = 3.0  # flow before the fault
AFTER_S = 6.0  # flow after the stores are whole again
PROVIDER = "Dr. Smith"


def event(event_id: str, user_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "CLAIM_REJECTED", "recipients": [{"user_id": user_id}],
            "data": {"provider_name": PROVIDER, "claim_id": event_id}}


class Tab:
    """One browser tab of one user: reads frames, reconnects (to either node) with ?since= when the socket
    ends, refetches over REST on `resync`. Keeps every notification's event id and when it arrived."""

    def __init__(self, http: aiohttp.ClientSession, ports: list[int], user: str, token: str) -> None:
        self.http, self.ports, self.user, self.token = http, ports, user, token
        self.received: dict[str, float] = {}  # event id -> first arrival (monotonic)
        self.last_id: str | None = None
        self.reconnects = 0
        self.opened = asyncio.Event()
        self.unauthorized = asyncio.Event()  # closed with 4001: the tab stops, as notify-client.js does
        self._task: asyncio.Task[None] | None = None

    def start(self, port_index: int) -> None:
        self._task = asyncio.create_task(self._run(port_index))

    async def _run(self, port_index: int) -> None:
        while True:
            port = self.ports[port_index % len(self.ports)]
            params = {"token": self.token, **({"since": self.last_id} if self.last_id else {})}
            try:
                async with self.http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications", params=params) as ws:
                    async for message in ws:
                        if message.type is not WSMsgType.TEXT:
                            break
                        await self._frame(port, orjson.loads(message.data))
                if ws.close_code == 4001:
                    self.unauthorized.set()
                    return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            self.reconnects += 1
            port_index += 1
            await asyncio.sleep(random.uniform(0.1, 0.4))

    async def _frame(self, port: int, frame: dict[str, Any]) -> None:
        if frame["type"] == "unread_count":
            self.opened.set()
        elif frame["type"] == "notification":
            self._note(frame["data"])
        elif frame["type"] == "resync":
            await self._refetch(port)

    def _note(self, data: dict[str, Any]) -> None:
        event_id = data["action_url"].rsplit("/", 1)[1]
        self.received.setdefault(event_id, time.monotonic())
        self.last_id = data["notification_id"]

    async def _refetch(self, port: int) -> None:
        before = None
        while True:
            params = {"limit": "100", **({"before": before} if before else {})}
            async with self.http.get(f"http://127.0.0.1:{port}/api/notifications", params=params,
                                     headers={"Authorization": f"Bearer {self.token}"}) as response:
                page = await response.json()
            for item in reversed(page["items"]):
                self._note(item)
            before = page["next_before"]
            if before is None:
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Producer:
    """A steady flow through `EventProducer` (the producer helper, built from the same settings as the
    services); a call that fails is retried with the same event id until it is acknowledged."""

    def __init__(self, producer: EventProducer, users: list[str]) -> None:
        self.producer = producer
        self.users = users
        self.acked: dict[str, tuple[str, float]] = {}  # event id -> (user, acknowledged at, monotonic)
        self.failures = 0
        self.generated = 0
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self, seconds: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            user = self.users[self.generated % len(self.users)]
            task = asyncio.create_task(self._send(event(f"ev-{self.generated:05d}", user)))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            self.generated += 1
            await asyncio.sleep(max(0.0, started + self.generated / RATE - time.monotonic()))

    async def _send(self, payload: dict[str, Any]) -> None:
        delay = 0.1
        while True:
            try:
                await self.producer.enqueue_event(payload)
            except Exception:  # noqa: BLE001 — a producer retries whatever went wrong, same event id
                self.failures += 1
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            self.acked[payload["event_id"]] = (payload["recipients"][0]["user_id"], time.monotonic())
            return

    async def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not self._pending, f"{len(self._pending)} events still not acknowledged {timeout_s}s after the flow"


class Fleet:
    """Two nodes and two workers, each a real `python -m notify_server` process."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.ports = [free_port(), free_port()]
        self.processes: list[Process] = []

    async def start(self) -> None:
        for n, port in enumerate(self.ports):
            node_env = {**self.env, "NOTIFY_SERVER_NODE_ID": f"ha-{n}"}
            self.processes.append(Process(["serve", "--port", str(port)], node_env, self.logs / f"node-{n}.log"))
        for n in range(2):
            self.processes.append(Process(["worker"], self.env, self.logs / f"worker-{n}.log"))
        for port, process in zip(self.ports, self.processes, strict=False):
            await wait_http_ok(f"http://127.0.0.1:{port}/readyz", process, 60)
        for process in self.processes[2:]:
            await wait_output(process, "worker consuming", 60)

    def check_alive(self) -> None:
        for process in self.processes:
            assert process.popen.poll() is None, f"a process exited:\n{process.output()[-3000:]}"
            assert "Traceback" not in process.output(), process.output()[-5000:]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


async def open_tabs(http: aiohttp.ClientSession, fleet: Fleet, tokens: dict[str, str]) -> list[Tab]:
    tabs = [Tab(http, fleet.ports, user, token) for user, token in tokens.items()]
    for n, tab in enumerate(tabs):
        tab.start(n)
    await asyncio.wait_for(asyncio.gather(*(tab.opened.wait() for tab in tabs)), 30)
    return tabs


def longest_silence(tabs: list[Tab], since: float) -> float:
    """The longest time, from `since` on, in which no tab received anything: how long delivery stopped."""
    arrivals = sorted(t for tab in tabs for t in tab.received.values() if t >= since)
    points = [since, *arrivals]
    return max((b - a for a, b in zip(points, points[1:], strict=False)), default=float("inf"))


def stored_events(database_url: str) -> dict[str, list[str]]:
    """{event id: [recipient per stored row]}."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT event_id, recipient_id FROM notifications")
            rows = cur.fetchall()
    finally:
        conn.close()
    stored: dict[str, list[str]] = {}
    for event_id, recipient in rows:
        stored.setdefault(event_id, []).append(recipient)
    return stored


async def settle(producer: Producer, tabs: list[Tab], database_url: str, timeout_s: float = 60) -> None:
    """Until every acknowledged event is stored and in its tab (or the timeout: the asserts say what is missing)."""
    deadline = time.monotonic() + timeout_s
    by_user = {tab.user: tab for tab in tabs}
    while time.monotonic() < deadline:
        stored = await asyncio.to_thread(stored_events, database_url)
        if all(e in stored and e in by_user[user].received for e, (user, _) in producer.acked.items()):
            return
        await asyncio.sleep(0.5)


def books(producer: Producer, tabs: list[Tab], database_url: str) -> dict[str, int]:
    stored = stored_events(database_url)
    by_user = {tab.user: tab for tab in tabs}
    acked = producer.acked
    return {
        "acknowledged": len(acked),
        "lost": sum(1 for e in acked if e not in stored),
        "duplicated": sum(1 for rows in stored.values() if len(rows) > 1),
        "misaddressed": sum(1 for e, rows in stored.items() if e in acked and rows != [acked[e][0]]),
        "missing_from_tabs": sum(1 for e, (user, _) in acked.items() if e not in by_user[user].received),
    }


def report(name: str, **figures: Any) -> None:
    print(f"\n[figures] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# ---------------------------------------------------------------- Redis: Sentinel promotes the replica


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelRedis]:
    group = SentinelRedis(tmp_path / "redis")
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.mark.timeout(240)
async def test_sentinel_promotes_the_replica_under_load_and_no_acknowledged_event_is_lost(
    sentinels: SentinelRedis, settings: Settings, sessions: SessionStore, cli_env: dict[str, str], tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    env = {**cli_env, **sentinels.env(), "NOTIFY_REDIS_MIN_REPLICAS_ACKED": "1", "NOTIFY_PRESENCE_TTL_S": "3",
           "NOTIFY_WORKER_POLL_DELAY_S": "0.05", "NOTIFY_WORKER_RETRY_BACKOFF_MAX_S": "1",
           "NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S": "2"}
    producer_settings = settings.replace(redis={
        "url": sentinels.url, "sentinels": tuple(sentinels.sentinel_list.split(",")), "sentinel_master": MASTER_NAME,
        "min_replicas_acked": 1, "replica_ack_timeout_ms": 1000})
    users = [f"ha-u{n:02d}" for n in range(USERS)]
    tokens = {user: (await sessions.create(user, 3600)).token for user in users}
    fleet = Fleet(env, tmp_path)
    producer = Producer(EventProducer.from_settings(producer_settings, socket_timeout=5), users)
    tabs: list[Tab] = []
    try:
        await fleet.start()
        checked = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "notify_server", "check"], env=env, cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0 and checked.stdout.startswith("ok:"), checked.stderr
        tabs = await open_tabs(http, fleet, tokens)
        flow = asyncio.create_task(producer.run(BEFORE_S + 30))
        await asyncio.sleep(BEFORE_S)

        old = await asyncio.to_thread(sentinels.kill_primary)
        killed = time.monotonic()
        new = await asyncio.to_thread(sentinels.wait_promoted, old)
        promoted_s = time.monotonic() - killed
        # The killed server comes back as a replica of the new primary (as an orchestrator restarts it):
        # until then no replica confirms an enqueue, and the producer retries.
        await asyncio.to_thread(sentinels.start_as_replica, old, new)
        await asyncio.to_thread(sentinels.wait_healthy)
        whole_s = time.monotonic() - killed
        await asyncio.sleep(AFTER_S)
        flow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flow
        await producer.drain(30)
        first_ack_s = min((at for _, at in producer.acked.values() if at > killed), default=float("inf")) - killed

        await settle(producer, tabs, settings.database.url)
        figures = await asyncio.to_thread(books, producer, tabs, settings.database.url)
        silence_s = longest_silence(tabs, killed - 1.0)
        report("Redis fail-over (Sentinel, primary SIGKILLed)", promoted_after_s=round(promoted_s, 2),
               replica_back_after_s=round(whole_s, 2), first_acknowledged_enqueue_after_s=round(first_ack_s, 2),
               longest_silence_at_the_tabs_s=round(silence_s, 2), failed_enqueue_calls=producer.failures,
               tab_reconnects=sum(tab.reconnects for tab in tabs), **figures)
        assert figures == {"acknowledged": producer.generated, "lost": 0, "duplicated": 0, "misaddressed": 0,
                           "missing_from_tabs": 0}
        assert any(at > killed + promoted_s for _, at in producer.acked.values()), "no event acknowledged after it"

        # The revocation channel followed too: both nodes resubscribed on the new primary by themselves.
        revoked = tabs[0]
        assert await sessions.revoke(tokens[revoked.user]) is not None
        publisher = redis_client(producer_settings.redis)
        try:
            await publish_revocation(publisher, hash_token(tokens[revoked.user]))
        finally:
            await publisher.aclose()
        await asyncio.wait_for(revoked.unauthorized.wait(), 5)
        assert not any(tab.unauthorized.is_set() for tab in tabs[1:])
        fleet.check_alive()
    finally:
        for tab in tabs:
            await tab.stop()
        await producer.producer.aclose()
        fleet.stop()


# ---------------------------------------------------------------- Postgres: the standby is promoted


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[PostgresPair, str]]:
    pair = PostgresPair(tmp_path / "pg")
    try:
        pair.start()
        url = pair.create_database("notify_ha")
        apply_migrations(url)  # through the multi-host URL, as `notify-server migrate` would
        yield pair, url
    finally:
        pair.stop()


@pytest.mark.timeout(240)
async def test_standby_promoted_under_load_workers_resume_by_themselves_and_nothing_is_lost(
    postgres: tuple[PostgresPair, str], settings: Settings, cli_env: dict[str, str], tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    pair, database_url = postgres
    env = {**cli_env, "NOTIFY_DATABASE_URL": database_url, "NOTIFY_PRESENCE_TTL_S": "3",
           "NOTIFY_WORKER_POLL_DELAY_S": "0.05", "NOTIFY_WORKER_RETRY_BACKOFF_MAX_S": "1",
           "NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S": "2"}
    users = [f"pg-u{n:02d}" for n in range(USERS)]
    db = Database(DatabaseSettings(url=database_url))
    try:
        store = SessionStore(db)
        tokens = {user: (await store.create(user, 3600)).token for user in users}
    finally:
        await db.close()
    fleet = Fleet(env, tmp_path)
    producer = Producer(EventProducer.from_settings(settings), users)
    tabs: list[Tab] = []
    try:
        await fleet.start()
        tabs = await open_tabs(http, fleet, tokens)
        flow = asyncio.create_task(producer.run(BEFORE_S + 30))
        await asyncio.sleep(BEFORE_S)

        stopped = time.monotonic()
        await asyncio.to_thread(pair.fail_over)  # the primary stopped (fast), the standby promoted
        promoted_s = time.monotonic() - stopped
        await asyncio.sleep(AFTER_S)
        flow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flow
        await producer.drain(30)

        await settle(producer, tabs, database_url)
        figures = await asyncio.to_thread(books, producer, tabs, database_url)
        silence_s = longest_silence(tabs, stopped - 1.0)
        promoted_at = stopped + promoted_s
        first_after = min((t for tab in tabs for e, t in tab.received.items()
                           if e in producer.acked and producer.acked[e][1] > promoted_at), default=float("inf"))
        report("Postgres fail-over (standby promoted)", stop_and_promote_s=round(promoted_s, 2),
               longest_silence_at_the_tabs_s=round(silence_s, 2),
               first_event_sent_after_promotion_delivered_after_s=round(first_after - stopped, 2),
               tab_reconnects=sum(tab.reconnects for tab in tabs), **figures)
        assert figures == {"acknowledged": producer.generated, "lost": 0, "duplicated": 0, "misaddressed": 0,
                           "missing_from_tabs": 0}
        assert first_after < float("inf"), "no event sent after the promotion reached a tab"
        fleet.check_alive()
    finally:
        for tab in tabs:
            await tab.stop()
        await producer.producer.aclose()
        fleet.stop()
