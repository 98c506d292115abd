"""Web Push throughput and latency (issue 20), against the verifying push service of the tests.

    python -m bench.webpush [--runs 3] [--recipients 10000] [--away 5000] [--online 500] [--singles 20]

Each run: a fresh database and Redis db, one `notify-server serve` and one `notify-server worker`
(real processes, web push on), and the push service of tests/pushservice.py in a process of its own,
which verifies every message's VAPID JWT and decrypts it with the "browser's" keys. Then:
- fan-out: one event to --recipients users; --away of them have a subscription and no tab, --online
  more have a subscription and a tab open (a WebSocket to the node: they must get no push). Measured:
  from the event's storage (its `created_at`, read from the decrypted messages) to the first and the
  last message received, and that exactly --away messages arrived, all decrypted;
- single events: --singles events one after another, each to one away subscriber: storage → message.
Figures are medians over the runs; docs/benchmarks.md ("Web Push") has this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import psycopg2.extras
from aiohttp import web
from redis.asyncio import Redis

from bench.procstats import CpuMeter, redis_pids, wait_quiet
from bench.stack import Processes, env_for, percentile, stores
from notify_server.core.settings import DatabaseSettings
from notify_server.core.vapid_keys import application_server_key, b64url_decode, create_key_file
from notify_server.ingest.producer import enqueue_event
from notify_server.storage.db import Database
from notify_server.storage.sessions import SessionStore
from tests.processes import free_port, wait_http_ok
from tests.pushservice import PushService

QUEUE = "notify:events"


# ---------------------------------------------------------------- the push service, in its own process


def _push_service(public_key: str, count: int, out: Any) -> None:
    async def run() -> None:
        async with PushService(public_key).running() as service:
            subscriptions = [service.subscribe() for _ in range(count)]

            async def stats(request: web.Request) -> web.Response:
                delivered = service.delivered
                return web.json_response({
                    "delivered": len(delivered), "refused": service.refused[:5], "requests": service.requests,
                    "tokens": [d.token for d in delivered] if request.query.get("tokens") else [],
                    "first": min((d.wall for d in delivered), default=None),
                    "last": max((d.wall for d in delivered), default=None),
                    "created_at": sorted({d.message["data"]["created_at"] for d in delivered}),
                    "arrivals": [[d.message["data"]["created_at"], d.wall] for d in delivered],
                })

            app = web.Application()
            app.router.add_get("/stats", stats)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            stats_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            out.put({"origin": service.origin, "stats": f"http://127.0.0.1:{stats_port}/stats",
                     "subscriptions": [{"token": s.token, **s.as_json()} for s in subscriptions]})
            await asyncio.Event().wait()

    asyncio.run(run())


def _epoch(created_at: str) -> float:
    return dt.datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()


async def _stats(http: aiohttp.ClientSession, url: str, **query: str) -> dict[str, Any]:
    async with http.get(url, params=query) as response:
        result: dict[str, Any] = await response.json()
        return result


async def _wait_delivered(http: aiohttp.ClientSession, url: str, count: int, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await _stats(http, url)
        if stats["delivered"] >= count or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- one run


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def _subscribe_all(database_url: str, rows: list[tuple[str, str, bytes, bytes]]) -> None:
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth) VALUES %s", rows, page_size=1000)
    finally:
        conn.close()


async def one_run(run: int, args: argparse.Namespace) -> dict[str, Any]:
    subscribers = args.away + args.online + args.singles
    with stores() as (database_url, redis_url), Processes() as children, tempfile.TemporaryDirectory() as tmp:
        key_path = str(Path(tmp) / "vapid.pem")
        public_key = application_server_key(create_key_file(key_path))
        queue: Any = multiprocessing.Queue()
        service = multiprocessing.Process(target=_push_service, args=(public_key, subscribers, queue), daemon=True)
        service.start()
        try:
            info = queue.get(timeout=60)
            subscriptions = info["subscriptions"]
            away = [f"away{i}" for i in range(args.away)]
            online = [f"online{i}" for i in range(args.online)]
            singles = [f"single{i}" for i in range(args.singles)]
            owners = away + online + singles
            _subscribe_all(database_url, [
                (user, s["endpoint"], b64url_decode(s["keys"]["p256dh"]), b64url_decode(s["keys"]["auth"]))
                for user, s in zip(owners, subscriptions, strict=True)])
            token_owner = {s["token"]: user for user, s in zip(owners, subscriptions, strict=True)}
            env = env_for(database_url, redis_url, NOTIFY_WEB_PUSH_ENABLED="true",
                          NOTIFY_WEB_PUSH_VAPID_PRIVATE_KEY_FILE=key_path,
                          NOTIFY_WEB_PUSH_SUBJECT="mailto:bench@example.com",
                          NOTIFY_WEB_PUSH_ALLOWED_HOSTS=info["origin"])
            port = free_port()
            node = children.start("node", ["serve", "--port", str(port)], env)
            worker = children.start("worker", ["worker"], env)
            await wait_http_ok(f"http://127.0.0.1:{port}/readyz", node)
            await asyncio.sleep(1.0)  # the worker is polling, its web push loop reading

            db = Database(DatabaseSettings(url=database_url, pool_min_size=1, pool_max_size=4))
            redis = Redis.from_url(redis_url)
            # No connection limit: each tab holds one for good.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                tabs = []
                readers: list[asyncio.Task[None]] = []
                try:
                    sessions = SessionStore(db)
                    for user in online:
                        token = (await sessions.create(user, 3600)).token
                        ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws/notifications?token={token}")
                        await ws.receive(timeout=10)  # its unread count: registered, present
                        tabs.append(ws)
                        # A tab reads its socket (aiohttp answers the heartbeat's pings only while it is
                        # read): one left unread is closed as stale after a heartbeat, and its user is away.
                        readers.append(asyncio.get_running_loop().create_task(_drain(ws)))
                    others = [f"nobody{i}" for i in range(args.recipients - len(away) - len(online))]
                    recipients = [{"user_id": u} for u in away + online + others]
                    spy = None
                    if args.profile:  # py-spy (the bench extra) samples the worker through the fan-out
                        spy = subprocess.Popen(
                            ["py-spy", "record", "-p", str(worker.popen.pid), "-o", f"{args.profile}-{run}.txt",
                             "--format", "raw", "-d", "20", "-r", "200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        await asyncio.sleep(1.0)
                    # In a thread: wait_quiet sleeps, and this loop must go on answering the tabs' pings.
                    quiet = await asyncio.to_thread(wait_quiet, [worker.popen.pid, node.popen.pid, service.pid or 0],
                                                    args.quiet_pct, max_wait_s=args.quiet_wait_s)
                    meter = CpuMeter({"worker": [worker.popen.pid], "push service": [service.pid or 0],
                                      "node": [node.popen.pid], "redis": redis_pids()}).start()
                    started = time.time()
                    await enqueue_event(redis, {"event_id": f"fanout-{run}", "event_type": "COMMENT_ADDED",
                                                "recipients": recipients,
                                                "data": {"author_name": "Bench", "excerpt": "fan-out"}},
                                        queue_name=QUEUE)
                    stats = await _wait_delivered(http, info["stats"], args.away, args.timeout_s)
                    meter.stop()
                    await asyncio.sleep(1.0)  # anything sent to the online users would have arrived by now
                    stats = await _stats(http, info["stats"], tokens="1")
                    stored_at = _epoch(stats["created_at"][0]) if stats["created_at"] else float("nan")
                    pushed_online = sum(1 for t in stats["tokens"] if token_owner[t].startswith("online"))
                    fanout = {
                        "delivered": stats["delivered"], "expected": args.away, "pushed_to_online": pushed_online,
                        "refused": stats["refused"], "requests": stats["requests"],
                        "enqueue_to_stored_s": stored_at - started,
                        "stored_to_first_s": (stats["first"] or float("nan")) - stored_at,
                        "stored_to_last_s": (stats["last"] or float("nan")) - stored_at,
                        "cpu_s": {name: round(v, 2) for name, v in meter.seconds.items()}, "wall_s": meter.wall_s,
                        "others_before_pct": quiet,
                    }
                    print(f"  run {run}: fan-out {args.recipients} recipients, {args.away} away subscribers: "
                          f"{fanout['delivered']}/{args.away} decrypted, {pushed_online} to online users; "
                          f"stored {fanout['enqueue_to_stored_s']:.2f} s after enqueue, first push "
                          f"{fanout['stored_to_first_s']:.2f} s and last {fanout['stored_to_last_s']:.2f} s after "
                          f"storage", flush=True)
                    print(f"  run {run}: CPU seconds over those {meter.wall_s:.1f} s: "
                          + ", ".join(f"{k} {v:.1f}" for k, v in fanout["cpu_s"].items()), flush=True)
                    if spy is not None:
                        spy.wait()
                    before = stats["delivered"]
                    for i, user in enumerate(singles):
                        await enqueue_event(redis, {"event_id": f"single-{run}-{i}", "event_type": "COMMENT_ADDED",
                                                    "recipients": [{"user_id": user}],
                                                    "data": {"author_name": "Bench", "excerpt": str(i)}},
                                            queue_name=QUEUE)
                        await _wait_delivered(http, info["stats"], before + i + 1, 10.0)
                    stats = await _stats(http, info["stats"])
                    fanout_created = stats["created_at"][0]
                    latencies = [wall - _epoch(created) for created, wall in stats["arrivals"]
                                 if created != fanout_created]
                    single = {"count": len(latencies), "p50_ms": percentile(latencies, 50) * 1000,
                              "max_ms": max(latencies, default=float("nan")) * 1000}
                    print(f"  run {run}: {len(latencies)} single events: storage -> push p50 "
                          f"{single['p50_ms']:.0f} ms, max {single['max_ms']:.0f} ms", flush=True)
                finally:
                    for reader in readers:
                        reader.cancel()
                    for ws in tabs:
                        await ws.close()
                    await redis.aclose()
                    await db.close()
            return {"run": run, "fanout": fanout, "single": single, "logs": str(children.logs)}
        finally:
            service.terminate()
            service.join(5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--away", type=int, default=5_000, help="recipients with a subscription and no tab")
    parser.add_argument("--online", type=int, default=500, help="recipients with a subscription and a tab open")
    parser.add_argument("--singles", type=int, default=20, help="one-recipient events for storage -> push latency")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--quiet-pct", type=float, default=50.0,
                        help="before the fan-out, wait until the rest of the machine uses under this %% of a core")
    parser.add_argument("--quiet-wait-s", type=float, default=10.0, help="... but at most this long")
    parser.add_argument("--profile", default="", help="py-spy the worker during the fan-out into PATH-<run>.txt")
    args = parser.parse_args()
    results = [await one_run(run, args) for run in range(1, args.runs + 1)]

    def med(path: tuple[str, str]) -> float:
        return statistics.median(r[path[0]][path[1]] for r in results)

    print(f"median of {len(results)} runs: fan-out last push {med(('fanout', 'stored_to_last_s')):.2f} s after "
          f"storage (first {med(('fanout', 'stored_to_first_s')):.2f} s), stored "
          f"{med(('fanout', 'enqueue_to_stored_s')):.2f} s after enqueue; single events storage -> push p50 "
          f"{med(('single', 'p50_ms')):.0f} ms, max {med(('single', 'max_ms')):.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
