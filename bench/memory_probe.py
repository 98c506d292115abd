"""What an idle socket costs a node, by allocation site: a node in this process under tracemalloc, N
idle connections opened by the benchmark's load client (other processes), the RSS and the top sites.

    .venv/bin/python -m bench.memory_probe [--connections 4000] [--top 25] [--no-trace] [--minimal]

`--minimal` serves the smallest aiohttp WebSocket handler there is instead of the node (aiohttp's floor).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import secrets
import time
import tracemalloc

import aiopg
from aiohttp import web

from bench.loadclient import ClientPool
from bench.procstats import rss_kb
from bench.stack import stores
from notify_server.core.settings import load_settings
from notify_server.web.app import create_app
from tests.processes import free_port


async def minimal_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=4096)
    await ws.prepare(request)
    await ws.send_str('{"type":"unread_count","data":{"count":0}}')
    async for _message in ws:
        pass
    return ws


def minimal_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/ws/notifications", minimal_handler)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-trace", action="store_true", help="RSS only (tracemalloc inflates memory)")
    parser.add_argument("--minimal", action="store_true", help="a bare aiohttp handler, not the node")
    args = parser.parse_args()
    with stores() as (database_url, redis_url):
        settings = load_settings(environ={}).replace(database={"url": database_url}, redis={"url": redis_url})
        users = [f"m{i}" for i in range(args.connections // 2)]
        tokens = {u: secrets.token_urlsafe(24) for u in users}
        async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO sessions (token_hash, user_id, expires_at)"
                " SELECT h, u, now() + interval '2 hours' FROM unnest(%s::text[], %s::text[]) AS t(h, u)",
                ([hashlib.sha256(tokens[u].encode()).hexdigest() for u in users], users),
            )
        port = free_port()
        runner = web.AppRunner(minimal_app() if args.minimal else create_app(settings, node_id="probe"),
                               access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=8192).start()
        url = f"http://127.0.0.1:{port}/ws/notifications?token="
        async with ClientPool("notify", 2) as clients:
            await clients.open([(url + tokens[u], None) for u in users[:10] for _ in range(2)])
            await asyncio.sleep(1)
            gc.collect()
            if not args.no_trace:
                tracemalloc.start(8)
            before = tracemalloc.take_snapshot() if not args.no_trace else None
            rss0 = rss_kb(__import__("os").getpid())
            cpu0 = time.process_time()
            opened = await clients.open([(url + tokens[u], None) for u in users[10:] for _ in range(2)])
            cpu = time.process_time() - cpu0
            await asyncio.sleep(3)
            gc.collect()
            rss1 = rss_kb(__import__("os").getpid())
            n = opened["opened"]
            print(f"{n} idle sockets opened in {opened['open_s']:.2f}s, {cpu / n * 1e6:.0f} us of node CPU per connect;"
                  f" RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB = {(rss1 - rss0) / n:.2f} KiB each")
            if before is not None:
                after = tracemalloc.take_snapshot()
                stats = after.compare_to(before, "lineno")
                total = sum(s.size_diff for s in stats)
                print(f"traced: {total / n / 1024:.2f} KiB per socket")
                for stat in stats[: args.top]:
                    frame = stat.traceback[0]
                    print(f"{stat.size_diff / n:8.0f} B/socket {stat.count_diff / n:6.2f} blocks  "
                          f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}")
        await runner.cleanup()


if __name__ == "__main__":
    import uvloop  # as `serve` runs

    uvloop.install()
    asyncio.run(main())
