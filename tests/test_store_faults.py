"""Store faults (issue 9, "Done when"): Postgres restarted, read-only or not migrated, a Redis fail-over, one
event Postgres refuses, supervised loops, arq's pickle producers, one engine on the configured db and queue.

Where the issue says a fault "ends no process", the real commands run as subprocesses (`python -m
notify_server serve|worker`). Servers that a test stops, or turns
into a replica, are PRIVATE ones (test_faults' embedded Postgres, here on TCP, and `private_redis`); on the
shared servers a test only touches its own throw-away database (ALTER DATABASE, a CHECK constraint) or a
database it creates and drops itself. Waits are deadlines on conditions, with settings that shorten them
(NOTIFY_WORKER_RETRY_BACKOFF_MAX_S, NOTIFY_WORKER_POLL_DELAY_S, NOTIFY_PRESENCE_TTL_S).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import psycopg2
import pytest
import redis.exceptions
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from arq import create_pool
from arq.connections import RedisSettings as ArqRedisSettings
from arq.jobs import Job
from arq.worker import JobExecutionFailed
from redis.asyncio import Redis

from notify_server.auth.revocations import publish_revocation
from notify_server.core.metrics import ServerMetrics, render
from notify_server.core.settings import Settings
from notify_server.core.supervisor import LoopHealth, Supervisor
from notify_server.core.templates import Template
from notify_server.ingest.eventqueue import now_ms
from notify_server.ingest.jobcodec import arq_deserializer
from notify_server.ingest.producer import arq_pool, enqueue_event, enqueue_events
from notify_server.ops import embedded
from notify_server.storage.migrations import apply_migrations, expected_migrations
from notify_server.storage.sessions import SessionStore, hash_token
from notify_server.web.app import create_app
from tests import test_faults
from tests.helpers import run_worker_burst
from tests.processes import REPO_ROOT, Process, free_port, wait_http_ok
from tests.test_faults import (
    PrivatePostgres,
    PrivateRedis,
    Processes,
    connect,
    counters_match_rows,
    enqueue_raw,
    event,
    eventually,
    job_results,
    stored_counts,
)

# test_faults' fixtures, used here too: its real processes and its private Redis.
processes = test_faults.processes
private_redis = test_faults.private_redis

# ---------------------------------------------------------------- helpers


async def readyz(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, await response.json()


async def serve_not_ready(processes: Processes, name: str, node_id: str, **env: str) -> tuple[Process, int]:
    """A node that may come up not ready (/readyz 503): waits for /healthz only."""
    port = free_port()
    process = processes.start(name, "serve", "--port", str(port), NOTIFY_SERVER_NODE_ID=node_id, **env)
    await wait_http_ok(f"http://127.0.0.1:{port}/healthz", process)
    return process, port


async def tries(redis: Redis, event_ids: list[str]) -> list[int]:
    """How many times each job was claimed (arq's retry counter)."""
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.get(f"arq:retry:{event_id}")
        raw = await pipe.execute()
    return [int(r) if r is not None else 0 for r in raw]


async def all_tried(redis: Redis, event_ids: list[str], times: int) -> bool:
    return min(await tries(redis, event_ids)) >= times


async def not_queued(redis: Redis, queue: str, event_ids: list[str]) -> list[str]:
    """Of these jobs, those that are NOT both on the queue and stored under arq:job:<id>."""
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.zscore(queue, event_id)
            pipe.exists(f"arq:job:{event_id}")
        raw = await pipe.execute()
    return [e for n, e in enumerate(event_ids) if raw[2 * n] is None or not raw[2 * n + 1]]


async def all_stored(database_url: str, redis: Redis, queue: str, total: int) -> bool:
    return stored_counts(database_url)[0] >= total and await redis.zcard(queue) == 0


def assert_alive(*children: Process) -> None:
    for child in children:
        assert child.popen.poll() is None, f"{child.log_path.name} exited ({child.popen.returncode}):\n{child.output()}"


def run_cli(env: dict[str, str], *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notify_server", *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
    )


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def sql(database_url: str, *statements: tuple[str, tuple[Any, ...]] | str, read_write: bool = False) -> None:
    """Run statements in autocommit; read_write: in a session that is read-write whatever the database says."""
    options = "-c default_transaction_read_only=off" if read_write else None
    conn = psycopg2.connect(database_url, options=options) if options else psycopg2.connect(database_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                if isinstance(statement, tuple):
                    cur.execute(*statement)
                else:
                    cur.execute(statement)
    finally:
        conn.close()


def terminate_other_backends(database_url: str) -> tuple[str, tuple[Any, ...]]:
    return ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database_name(database_url),))


async def wait_for(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str, step_s: float = 0.1) -> Any:
    """Poll until check() returns something truthy; returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(step_s)


class Inbox:
    """Reads a tab's frames in the background: notification ids by action_url, and how it ended."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.by_url: dict[str, set[str]] = {}
        self.frames = 0
        self.ended: Any = None
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message.type is not WSMsgType.TEXT:
                self.ended = (message.type, message.data)
                return
            frame = orjson.loads(message.data)
            if frame["type"] == "notification":
                self.frames += 1
                data = frame["data"]
                self.by_url.setdefault(data["action_url"], set()).add(data["notification_id"])

    def has(self, event_ids: list[str]) -> bool:
        return all(f"/claims/{e}" in self.by_url for e in event_ids)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ws.close()


# ---------------------------------------------------------------- 1. Postgres restarted (twice) under uvloop


class TcpPrivatePostgres(PrivatePostgres):
    """The private Postgres listening on 127.0.0.1:<port>, as a deployed one does. Over TCP a connect
    to a stopped server fails inside the event loop, which is where uvloop raises `RuntimeError: unable
    to perform operation on <UVPoll closed=True>` from aiopg; over the Unix socket (what the embedded
    server offers by default) the connect fails before the loop sees it and the fault never shows."""

    def __init__(self, base: PrivatePostgres) -> None:
        self.__dict__.update(base.__dict__)
        self.port = free_port()
        parts = urlsplit(base.url)
        self.url = f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{self.port}{parts.path or '/postgres'}"

    def start(self) -> None:
        self._pg_ctl(
            ["-w", "-o", "-h 127.0.0.1", "-o", f"-p {self.port}", "-o", f"-k {self.socket_dir}",
             "-l", str(self.pgdata / "log"), "start"],
            pgdata=self.pgdata, user=self.user, timeout=30,
        )


@pytest.fixture
def private_tcp_postgres() -> Iterator[TcpPrivatePostgres]:
    """test_faults' private Postgres, on TCP, with its data outside pytest's base directory: as root the
    embedded server runs as its own user, which must be able to enter every parent of its data, and each
    pytest session that starts on the machine resets /tmp/pytest-of-<user> to 0700 (pg_ctl then fails
    with "could not access directory … Permission denied")."""
    root = Path(tempfile.mkdtemp(prefix="notify-store-faults-pg-"))
    try:
        with embedded.embedded_postgres(root) as url:
            apply_migrations(url)
            unix = PrivatePostgres(url, embedded.postgres_data_dir(root))
            tcp = TcpPrivatePostgres(unix)
            unix.stop()
            tcp.start()
            yield tcp
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_postgres_stopped_5_s_twice_the_worker_lives_every_event_is_stored_once_and_readyz_follows(
    processes: Processes, private_tcp_postgres: TcpPrivatePostgres, redis_client: Redis, settings: Settings
) -> None:
    """The worker runs under uvloop (`notify-server worker`), where aiopg's pool used to raise
    `RuntimeError … UVPoll closed` after a Postgres restart and end the process (3 out of 3 runs)."""
    postgres = private_tcp_postgres
    url, queue = postgres.url, settings.queues.events
    env = {"NOTIFY_DATABASE_URL": url, "NOTIFY_WORKER_RETRY_BACKOFF_MAX_S": "0.5"}
    node, port = await processes.serve("serve", "node-pgr", **env)
    worker = processes.start("worker", "worker", **env)
    sent: list[str] = []

    async def send(prefix: str, count: int) -> None:
        batch = [event(f"{prefix}-{n}", f"user-{n % 10}") for n in range(count)]
        await enqueue_raw(redis_client, batch, queue)
        sent.extend(e["event_id"] for e in batch)

    async with aiohttp.ClientSession() as http:
        # The worker's pool holds connections when Postgres goes away.
        await send("warm", 50)
        await eventually(lambda: all_stored(url, redis_client, queue, len(sent)), 60, "the first 50 events stored")

        for outage in range(2):
            postgres.stop()
            stopped = time.monotonic()
            sent_before = len(sent)
            statuses: list[tuple[int, Any]] = []
            rounds = 0
            while time.monotonic() - stopped < 5.0:  # down 5 s, events coming in all along
                await send(f"down{outage}-{rounds}", 20)
                rounds += 1
                status, body = await readyz(http, port)
                statuses.append((status, body.get("postgres")))
                await asyncio.sleep(0.25)
            sent_while_down = len(sent) - sent_before
            postgres.start()
            back = time.monotonic()
            assert all(s == 503 and str(pg).startswith("unavailable") for s, pg in statuses), statuses
            assert_alive(worker, node)

            await send(f"after{outage}", 20)
            await eventually(lambda: all_stored(url, redis_client, queue, len(sent)), 60,
                             f"every event stored after restart {outage + 1}", step_s=0.2)
            await wait_for(lambda: _status_is(http, port, 200), 20, f"/readyz 200 after restart {outage + 1}")
            print(f"\n[figures] Postgres stop {outage + 1}: readyz polls while down={len(statuses)} (all 503), "
                  f"events sent while down={sent_while_down}, all stored and ready {time.monotonic() - back:.1f}s "
                  "after start")
            assert_alive(worker, node)

    rows, distinct = stored_counts(url)
    assert (rows, distinct) == (len(sent), len(sent)), "an event was lost or stored twice"
    assert counters_match_rows(url) == []
    results = await job_results(redis_client, sent)
    assert all(r is not None and r["s"] and r["r"]["status"] == "stored" for r in results), \
        [r for r in results if r is None or not r["s"]][:3]
    assert any(r["t"] > 1 for r in results), "no job was retried: the outages were missed"
    assert_alive(worker, node)
    output = worker.output()
    assert "Traceback" not in output, output[-5000:]
    # Whether this run met uvloop's RuntimeError (it does over TCP, hundreds of times per outage).
    runtime_errors = output.count("kept for a retry: transient: RuntimeError")
    print(f"[figures] batches kept after uvloop's RuntimeError: {runtime_errors}")


async def _status_is(http: aiohttp.ClientSession, port: int, status: int) -> bool:
    try:
        return (await readyz(http, port))[0] == status
    except aiohttp.ClientError:
        return False


# ---------------------------------------------------------------- 2. the database turns read-only


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_read_only_database_keeps_every_event_queued_and_stores_each_once_when_writable_again(
    processes: Processes, settings: Settings, redis_client: Redis
) -> None:
    url, queue = settings.database.url, settings.queues.events
    name = database_name(url)
    worker = processes.start("worker", "worker", NOTIFY_WORKER_RETRY_BACKOFF_MAX_S="0.5")
    await enqueue_raw(redis_client, [event("ro-warm", "alice")], queue)
    await eventually(lambda: all_stored(url, redis_client, queue, 1), 30, "the warm-up event stored")

    events = [event(f"ro-{n}", f"user-{n % 5}") for n in range(20)]
    ids = [e["event_id"] for e in events]
    try:
        sql(url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on', terminate_other_backends(url))
        await enqueue_raw(redis_client, events, queue)
        # Every job was tried at least 3 times against the read-only database...
        await eventually(lambda: all_tried(redis_client, ids, 3), 60, "every job tried 3 times", step_s=0.1)
        # ...and kept: nothing stored, no result (neither stored nor failed), all still queued.
        assert stored_counts(url) == (1, 1)
        assert await job_results(redis_client, ids) == [None] * len(ids)
        assert await not_queued(redis_client, queue, ids) == []
        assert_alive(worker)
    finally:
        sql(url, f'ALTER DATABASE "{name}" RESET default_transaction_read_only', terminate_other_backends(url),
            read_write=True)

    await eventually(lambda: all_stored(url, redis_client, queue, 1 + len(ids)), 60,
                     "every event stored once the database is writable", step_s=0.2)
    assert stored_counts(url) == (1 + len(ids), 1 + len(ids))
    assert counters_match_rows(url) == []
    results = await job_results(redis_client, ids)
    assert all(r is not None and r["s"] and r["r"]["status"] == "stored" for r in results), results
    assert min(r["t"] for r in results) >= 3
    assert_alive(worker)


# ---------------------------------------------------------------- 3. a Redis fail-over episode


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_redis_failover_episode_ends_no_process_and_every_enqueued_event_is_stored_and_delivered(
    processes: Processes, private_redis: PrivateRedis, sessions: SessionStore, settings: Settings
) -> None:
    """`REPLICAOF` an unreachable primary for ~3 s (every write refused with READONLY, as on an old primary
    after a fail-over), then `REPLICAOF NO ONE`."""
    queue = settings.queues.events
    # Presence refreshed every 3 s (so the refresher meets the read-only spell) and alive 9 s (so alice
    # stays present across it and is pushed to live).
    env = {"NOTIFY_REDIS_URL": private_redis.url, "NOTIFY_PRESENCE_TTL_S": "9", "NOTIFY_WORKER_JOB_TIMEOUT_S": "20",
           "NOTIFY_WORKER_RETRY_BACKOFF_MAX_S": "0.5"}
    node, port = await processes.serve("serve", "node-fo", **env)
    worker = processes.start("worker", "worker", **env)
    token = (await sessions.create("alice", 600)).token
    client = Redis.from_url(private_redis.url)
    enqueued: list[str] = []
    refused: list[str] = []

    async def send(event_id: str) -> None:
        try:
            job = await enqueue_event(client, event(event_id, "alice"), queue_name=queue)
        except redis.exceptions.ReadOnlyError:
            refused.append(event_id)
        else:
            assert job is not None
            enqueued.append(event_id)

    try:
        async with aiohttp.ClientSession() as http:
            inbox = Inbox(await connect(http, port, token))
            for n in range(3):
                await send(f"fo-before-{n}")
            await eventually(lambda: _true(inbox.has(enqueued)), 15, "the first events delivered")

            # Events keep coming right up to the moment writes are refused: some are in the worker's hands
            # then (stored, but their push or their finish refused), and are retried once their claim lapses.
            stop_burst = asyncio.Event()

            async def burst() -> None:
                n = 0
                while not stop_burst.is_set():
                    await send(f"fo-burst-{n}")
                    n += 1
                    await asyncio.sleep(0.005)

            burster = asyncio.get_running_loop().create_task(burst())
            await asyncio.sleep(0.3)
            await client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            started = time.monotonic()
            await asyncio.sleep(0.1)
            stop_burst.set()
            await burster
            named: dict[str, Any] = {}
            n = 0
            while time.monotonic() - started < 3.0 or "presence-refresher" not in named:
                assert time.monotonic() - started < 20, f"/readyz named {named} while writes were refused"
                await send(f"fo-during-{n}")
                n += 1
                status, body = await readyz(http, port)
                if status == 503 and isinstance(body.get("loops"), dict):
                    named.update(body["loops"])
                await asyncio.sleep(0.1)
            await client.execute_command("REPLICAOF", "NO", "ONE")
            back = time.monotonic()
            assert "presence-refresher" in named, named
            assert refused, "no enqueue was refused: Redis never turned read-only"
            assert_alive(node, worker)

            for n in range(5):
                await send(f"fo-after-{n}")
            await eventually(lambda: _true(inbox.has(enqueued)), 40, "every enqueued event delivered live",
                             step_s=0.1)
            delivered_s = time.monotonic() - back
            # The batch in the worker's hands when writes were refused is finished as soon as Redis takes
            # writes again, not when its claims lapse (job timeout 20 s + 10 s).
            assert delivered_s < 15, f"delivered {delivered_s:.1f}s after the fail-over ended"
            print(f"\n[figures] redis fail-over: every event delivered {delivered_s:.2f}s after REPLICAOF NO ONE")
            await wait_for(lambda: _status_is(http, port, 200), 20, "/readyz 200 after the episode")
            assert inbox.ended is None, f"the socket ended: {inbox.ended}"
            await inbox.close()

        # Stored once each; delivered once each (one notification id per event, whatever was re-pushed).
        assert stored_counts(settings.database.url) == (len(enqueued), len(enqueued))
        assert all(len(inbox.by_url[f"/claims/{e}"]) == 1 for e in enqueued), inbox.by_url
        assert not any(f"/claims/{e}" in inbox.by_url for e in refused)
        assert counters_match_rows(settings.database.url) == []
        # A job whose push went out before its finish was refused is finished by its retry (its claim
        # lapses after job_timeout_s + 10 s); a retry re-pushes the same notification id.
        await eventually(lambda: _zero(client.zcard(queue)), 30, "every job finished", step_s=0.2)
        results = await job_results(client, enqueued)
        assert all(r is not None and r["s"] and r["r"]["status"] == "stored" for r in results), results
        print(f"\n[figures] Redis fail-over: enqueued={len(enqueued)} refused={len(refused)} "
              f"retried={sum(r['t'] > 1 for r in results)} "
              f"delivered by a retry's re-push={sum(r['t'] > 1 and r['r']['stored'] == 0 for r in results)} "
              f"frames beyond one per event={inbox.frames - len(enqueued)} "
              f"loops named={named} all delivered {delivered_s:.1f}s after REPLICAOF NO ONE")
        assert_alive(node, worker)
    finally:
        await client.aclose()


async def _true(value: bool) -> bool:
    return value


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


# ---------------------------------------------------------------- 4. not migrated


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    """A new database on the tests' server with nothing applied; dropped afterwards."""
    admin_url = with_database(database_url, "postgres")
    name = f"notify_nomig_{uuid.uuid4().hex[:12]}"
    sql(admin_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(database_url, name)
    finally:
        sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_an_unmigrated_database_keeps_events_logs_one_loud_line_and_readyz_and_check_say_so(
    processes: Processes, empty_database: str, redis_client: Redis, settings: Settings
) -> None:
    url, queue = empty_database, settings.queues.events
    env = {"NOTIFY_DATABASE_URL": url, "NOTIFY_WORKER_RETRY_BACKOFF_MAX_S": "0.5"}
    cli_env = {**processes.env, **env}
    every = expected_migrations()
    assert len(every) >= 2

    check = await asyncio.to_thread(run_cli, cli_env, "check")
    assert check.returncode == 1, (check.stdout, check.stderr)
    lines = check.stderr.strip().splitlines()
    assert len(lines) == 1, check.stderr
    assert f"not migrated (missing {', '.join(every)})" in lines[0] and "notify-server migrate" in lines[0], lines
    assert check.stdout == ""

    node, port = await serve_not_ready(processes, "serve", "node-nomig", **env)
    worker = processes.start("worker", "worker", **env)
    events = [event(f"nomig-{n}", f"user-{n % 5}") for n in range(20)]
    ids = [e["event_id"] for e in events]
    await enqueue_raw(redis_client, events, queue)
    async with aiohttp.ClientSession() as http:
        status, body = await readyz(http, port)
        assert status == 503, body
        assert body["postgres"] == f"not migrated (missing {', '.join(every)})", body

        await eventually(lambda: all_tried(redis_client, ids, 5), 60, "every job tried 5 times", step_s=0.1)
        assert await job_results(redis_client, ids) == [None] * len(ids)
        assert await not_queued(redis_client, queue, ids) == []
        assert_alive(worker, node)
        loud = [line for line in worker.output().splitlines() if "notify-server migrate" in line]
        assert len(loud) == 1, f"expected one loud line for {min(await tries(redis_client, ids))}+ tries:\n" + \
            "\n".join(loud)
        # It names what is missing: the first thing a batch needs, the preferences of its recipients (migration
        # 0008) or, for a small batch, the store function (0005) that carries their check.
        assert "does not exist" in loud[0], loud[0]
        assert any(name in loud[0] for name in ("notification_preferences", "notify_require_no_preferences",
                                                "notify_store_events")), loud[0]
        assert " ERROR " in loud[0] and "event(s) kept" in loud[0], loud[0]

        migrate = await asyncio.to_thread(run_cli, cli_env, "migrate")
        assert migrate.returncode == 0, migrate.stderr
        await eventually(lambda: all_stored(url, redis_client, queue, len(ids)), 30,
                         "every event stored after `notify-server migrate`", step_s=0.1)
        await wait_for(lambda: _status_is(http, port, 200), 20, "/readyz 200 once migrated")
        assert stored_counts(url) == (len(ids), len(ids))
        assert counters_match_rows(url) == []
        results = await job_results(redis_client, ids)
        assert all(r is not None and r["s"] and r["r"]["status"] == "stored" for r in results), results

        # Partly migrated: the last migration's record is gone.
        sql(url, ("DELETE FROM _yoyo_migration WHERE migration_id = %s", (every[-1],)))
        check = await asyncio.to_thread(run_cli, cli_env, "check")
        assert check.returncode == 1, (check.stdout, check.stderr)
        lines = check.stderr.strip().splitlines()
        assert len(lines) == 1 and f"not migrated (missing {every[-1]})" in lines[0], check.stderr
        status, body = await readyz(http, port)
        assert (status, body["postgres"]) == (503, f"not migrated (missing {every[-1]})"), body
    assert_alive(worker, node)
    assert sum("notify-server migrate" in line for line in worker.output().splitlines()) == 1


# ---------------------------------------------------------------- 5. a revocation heard while Postgres is down


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_revocation_announced_while_postgres_is_down_closes_the_socket_with_4001_once_it_is_back(
    processes: Processes, private_tcp_postgres: TcpPrivatePostgres, redis_client: Redis
) -> None:
    postgres = private_tcp_postgres
    token = "rv-token-" + uuid.uuid4().hex
    token_hash = hash_token(token)
    sql(postgres.url, ("INSERT INTO sessions (token_hash, user_id, expires_at)"
                               " VALUES (%s, 'rv-user', now() + interval '1 hour')", (token_hash,)))
    # No periodic re-check during the test: only the announced revocation can close the socket.
    env = {"NOTIFY_DATABASE_URL": postgres.url, "NOTIFY_SESSION_RECHECK_INTERVAL_S": "3600"}
    node, port = await processes.serve("serve", "node-rv", **env)
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, port, token)
        # Revoked in the table (as `notify-server session revoke` does), announced only once Postgres is down.
        sql(postgres.url, ("UPDATE sessions SET revoked_at = now() WHERE token_hash = %s", (token_hash,)))
        postgres.stop()

        async def heard_and_pending() -> bool:
            await publish_revocation(redis_client, token_hash)  # again until heard: pub/sub keeps nothing
            status, body = await readyz(http, port)
            loops = body.get("loops")
            return status == 503 and isinstance(loops, dict) and "revocation-applier" in loops

        await wait_for(heard_and_pending, 15, "the node to hear the revocation and fail to apply it", step_s=0.2)
        with pytest.raises(TimeoutError):  # not applied while Postgres is down: the socket stays open
            message = await ws.receive(timeout=0.5)
            raise AssertionError(f"the socket got {message.type} {message.data} while Postgres was down")

        postgres.start()
        back = time.monotonic()
        message = await ws.receive(timeout=10)
        closed_s = time.monotonic() - back
        assert (message.type, message.data) == (WSMsgType.CLOSE, 4001), (message.type, message.data)
        assert closed_s <= 5.0, f"closed {closed_s:.1f}s after Postgres answered again"
        await wait_for(lambda: _status_is(http, port, 200), 20, "/readyz 200 once the revocation is applied")
        print(f"\n[figures] revocation heard while Postgres was down: closed 4001 {closed_s:.2f}s after it was back")
    assert_alive(node)


# ---------------------------------------------------------------- 6. one event Postgres refuses


def titled(event_id: str, user_id: str, subject: str) -> dict[str, Any]:
    return {"event_id": event_id, "event_type": "TITLED", "recipients": [{"user_id": user_id}],
            "data": {"subject": subject}}


@pytest.mark.timeout(60)
async def test_an_event_postgres_refuses_is_rejected_alone_and_the_rest_of_its_batch_is_stored(
    settings: Settings, redis_client: Redis
) -> None:
    url, queue = settings.database.url, settings.queues.events
    template = Template.compile("TITLED", title="About {subject}", body="See {subject}.", priority="NORMAL",
                                action_url=None)
    titled_settings = dataclasses.replace(settings, templates={**settings.templates, "TITLED": template})
    events = [titled(f"chk-{n}", f"user-{n}", "REFUSED" if n == 4 else f"item {n}") for n in range(10)]
    ids = [e["event_id"] for e in events]
    sql(url, "ALTER TABLE notifications ADD CONSTRAINT test_refused_title CHECK (title NOT LIKE '%REFUSED%')")
    try:
        await enqueue_raw(redis_client, events, queue)
        # One batch (all ten are due when the worker starts; batch_max is 200); the burst ends once the
        # queue is empty, so nothing circles.
        worker = await asyncio.wait_for(run_worker_burst(titled_settings), 30)
    finally:
        sql(url, "ALTER TABLE notifications DROP CONSTRAINT IF EXISTS test_refused_title")

    results = await job_results(redis_client, ids)
    refused = results[4]
    assert refused is not None and refused["r"]["status"] == "rejected", refused
    assert refused["r"]["reason"].startswith("database"), refused
    assert refused["t"] == 1, "the refused event was retried"
    others = [r for n, r in enumerate(results) if n != 4]
    assert all(r is not None and r["s"] and r["r"]["status"] == "stored" and r["t"] == 1 for r in others), others
    assert stored_counts(url) == (9, 9)
    assert counters_match_rows(url) == []
    assert (worker.jobs_retried, worker.jobs_failed, worker.jobs_complete) == (0, 0, 10)
    assert await redis_client.zcard(queue) == 0
    assert [k async for k in redis_client.scan_iter(match="arq:retry:*")] == []


# ---------------------------------------------------------------- 7. supervised loops


def restarts_of(metrics_text: str, loop: str) -> float:
    prefix = f'notify_loop_restarts_total{{loop="{loop}"}} '
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


@pytest.mark.timeout(30)
async def test_the_supervisor_restarts_a_failing_loop_names_it_while_down_and_not_once_it_is_ok() -> None:
    metrics = ServerMetrics(lambda: 0)
    supervisor = Supervisor(metrics.loop_restarts, backoff_max_s=0.2)
    fails = 3
    calls = 0
    recover = asyncio.Event()
    recovered = asyncio.Event()

    async def flaky(health: LoopHealth) -> None:
        nonlocal calls
        calls += 1
        if calls <= fails:
            raise ConnectionRefusedError(f"store away ({calls})")
        await recover.wait()  # running again, but no progress reported yet: still down
        health.ok()
        recovered.set()
        await asyncio.Event().wait()

    async def steady(health: LoopHealth) -> None:
        health.ok()
        await asyncio.Event().wait()

    supervisor.start("steady", steady)
    supervisor.start("flaky", flaky)
    try:
        await wait_for(lambda: _true(calls > fails), 10, "the loop restarted after each failure", step_s=0.01)
        assert supervisor.down() == {"flaky": "ConnectionRefusedError"}
        text = render(metrics.registry).decode()
        assert restarts_of(text, "flaky") == fails, text
        assert restarts_of(text, "steady") == 0
        recover.set()
        await asyncio.wait_for(recovered.wait(), 5)
        assert supervisor.down() == {}
        assert restarts_of(render(metrics.registry).decode(), "flaky") == fails
    finally:
        await supervisor.stop()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_node_whose_redis_port_is_closed_names_its_loops_counts_restarts_and_is_ready_once_redis_is_up(
    aiohttp_client: Callable[..., Awaitable[TestClient]], settings: Settings, private_redis: PrivateRedis
) -> None:
    private_redis.stop()  # its port is closed now; the same port is served again by start()
    node_settings = settings.replace(redis={"url": private_redis.url}, presence={"ttl_s": 3, "refresh_interval_s": 1})
    client = await aiohttp_client(create_app(node_settings, node_id="node-sup"))

    async def down_loops() -> dict[str, Any] | None:
        response = await client.get("/readyz")
        body = await response.json()
        loops = body.get("loops")
        if response.status == 503 and isinstance(loops, dict) and {"presence-refresher", "push-consumer",
                                                                    "revocation-listener"} <= set(loops):
            assert body["redis"].startswith("unavailable"), body
            return body
        return None

    body = await wait_for(down_loops, 15, "/readyz naming the loops that need Redis")
    assert all(str(state).startswith("down (") for state in body["loops"].values()), body

    async def restarts() -> float:
        return restarts_of(await (await client.get("/metrics")).text(), "presence-refresher")

    first = await restarts()
    assert first >= 1
    await wait_for(lambda: _greater(restarts(), first), 15, "the presence refresher restarted again")

    private_redis.start()
    back = time.monotonic()

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    await wait_for(ready, 20, "/readyz 200 once Redis answers")
    print(f"\n[figures] node on a closed Redis port: loops named {sorted(body['loops'])}, ready "
          f"{time.monotonic() - back:.2f}s after Redis started")


async def _greater(value: Awaitable[float], than: float) -> bool:
    return await value > than


# ---------------------------------------------------------------- 8. arq's default producer; the pickle guard


class _Reduce:
    """What a crafted pickle job carries: unpickling it would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_arq_pickle_producers_are_served_a_crafted_pickle_runs_nothing_and_json_jobs_still_work(
    processes: Processes, settings: Settings, redis_client: Redis, tmp_path: Path
) -> None:
    url, queue = settings.database.url, settings.queues.events
    worker = processes.start("worker", "worker")
    pool = await create_pool(ArqRedisSettings.from_dsn(settings.redis.url))  # arq's default serializer: pickle
    try:
        # arq's own producer.
        pickled = event("arq-pickled", "alice")
        job = await pool.enqueue_job("process_event", pickled, _queue_name=queue, _job_id=pickled["event_id"])
        assert job is not None
        assert await job.result(timeout=30, poll_delay=0.05) == {"status": "stored", "recipients": 1, "stored": 1,
                                                                 "muted": 0}

        # A crafted pickle: its reduce would run `touch <marker>`; then a plain job behind it.
        marker = tmp_path / "pickle-ran"
        crafted = {"t": None, "f": "process_event", "a": [_Reduce(f"touch {marker}")], "k": {}, "et": now_ms()}
        await redis_client.set("arq:job:arq-crafted", pickle.dumps(crafted), px=86_400_000)
        await redis_client.zadd(queue, {"arq-crafted": now_ms() - 1000})
        after = event("arq-after-crafted", "bob")
        await enqueue_raw(redis_client, [after], queue)
        with pytest.raises(JobExecutionFailed, match=r"system") as refused:
            await Job("arq-crafted", pool, _queue_name=queue).result(timeout=30, poll_delay=0.05)
        assert "only plain data" in str(refused.value), refused.value
        assert not marker.exists(), "the crafted pickle's command ran"
        reader = arq_pool(redis_client)
        after_job = Job(after["event_id"], reader, _queue_name=queue, _deserializer=reader.job_deserializer)
        assert (await after_job.result(timeout=30, poll_delay=0.05))["status"] == "stored"

        # JSON: enqueue_event's Job, and a raw JSON job read through arq_pool.
        json_job = await enqueue_event(redis_client, event("arq-json", "carol"), queue_name=queue)
        assert json_job is not None
        assert (await json_job.result(timeout=30, poll_delay=0.05))["status"] == "stored"
        raw = event("arq-raw-json", "dave")
        await enqueue_raw(redis_client, [raw], queue)
        raw_job = Job(raw["event_id"], reader, _queue_name=queue, _deserializer=arq_deserializer)
        assert (await raw_job.result(timeout=30, poll_delay=0.05))["status"] == "stored"
    finally:
        await pool.aclose()
    assert not marker.exists()
    assert stored_counts(url) == (4, 4)
    assert_alive(worker)
    assert "arq-crafted" in worker.output() and "refers to" in worker.output()


# ---------------------------------------------------------------- 9. one engine, on the configured db and queue


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_arqs_own_worker_is_retired_and_the_one_engine_uses_the_configured_redis_db_and_queue(
    cli_env: dict[str, str], settings: Settings, redis_client: Redis
) -> None:
    """`arq workers.settings.WorkerSettings` says in one line to run `notify-server worker` and touches no
    job; `notify-server worker` then serves the configured (non-default) Redis db and queue."""
    db_number = urlsplit(settings.redis.url).path.lstrip("/")
    assert db_number not in ("", "0"), "the test's Redis db must not be db 0 for this test to mean anything"
    queue = f"notify:custom-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]
    events = [event(f"plain-arq-{run}-{n}", f"user-{n}") for n in range(5)]
    ids = [e["event_id"] for e in events]
    jobs = await enqueue_events(redis_client, events, queue_name=queue)
    assert all(job is not None for job in jobs)

    env = dict(cli_env, NOTIFY_QUEUES_EVENTS=queue, NOTIFY_WORKER_POLL_DELAY_S="0.05")
    arq_bin = str(Path(sys.executable).parent / "arq")
    retired = await asyncio.to_thread(
        subprocess.run, [arq_bin, "workers.settings.WorkerSettings", "--burst"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
    )
    assert retired.returncode == 1
    assert retired.stderr.strip().splitlines() == [
        "notify-server: arq's own worker is retired; run `notify-server worker` instead (the same queue, keys, "
        "configuration and job results; one engine, one retry policy)"
    ]
    assert await redis_client.zcard(queue) == len(ids), "the retired entry point touched the queue"
    assert stored_counts(settings.database.url) == (0, 0)

    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notify_server", "worker", env=env, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for job in jobs:
            assert job is not None
            assert (await job.result(timeout=60, poll_delay=0.05))["status"] == "stored"
    finally:
        worker.terminate()
        output = (await worker.communicate())[0].decode(errors="replace")
    assert worker.returncode == 0, output
    assert stored_counts(settings.database.url) == (len(ids), len(ids)), output
    assert await redis_client.zcard(queue) == 0
    assert await redis_client.zcard("notify:events") == 0 and await redis_client.zcard("arq:queue") == 0

    # Nothing of these events in db 0 (shared: other keys there are not ours to judge).
    db0 = Redis.from_url(with_database(settings.redis.url, "0"))
    try:
        async with db0.pipeline(transaction=False) as pipe:
            for event_id in ids:
                for prefix in ("arq:job:", "arq:result:", "arq:retry:", "arq:in-progress:"):
                    pipe.exists(prefix + event_id)
                for zset in (queue, "notify:events", "arq:queue"):
                    pipe.zscore(zset, event_id)
            found = await pipe.execute()
        assert not any(found), "the arq worker wrote to Redis db 0"
        assert await db0.exists(queue, queue + ":health-check") == 0
    finally:
        await db0.aclose()
