"""Why the python-socketio reference is often quoted at ~135 KB per socket and measures ~31 KiB here:
server RSS per idle Socket.IO connection with and without permessage-deflate negotiated.

bench.load's client never offers permessage-deflate (like notify-server, which refuses it). This probe
opens N connections to the peer with aiohttp's client, once offering it (`compress=15`) and once not,
and prints the server's RSS growth per connection for each.

    .venv/bin/python -m bench.peer_deflate_probe [--connections 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp

from bench.load import start_stack
from bench.peer_socketio import make_token
from bench.procstats import rss_kb
from bench.stack import Processes, stores


async def one(compress: int, n: int) -> float:
    with stores() as (database_url, redis_url), Processes() as children:
        stack = await start_stack(children, "sio", database_url, redis_url)
        pid = stack.server_pids[0]
        url = f"http://127.0.0.1:{stack.ports[0]}/socket.io/?EIO=4&transport=websocket"
        sem = asyncio.Semaphore(50)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def connect(i: int) -> aiohttp.ClientWebSocketResponse:
                async with sem:
                    ws = await http.ws_connect(url, compress=compress)
                    await ws.receive(timeout=30)  # "0{…}" open packet
                    await ws.send_str("40" + json.dumps({"token": make_token(stack.secret, f"d{i}")}))
                    await ws.receive(timeout=30)  # "40{…}" connected
                    return ws

            warm = [await connect(-1 - i) for i in range(20)]
            await asyncio.sleep(1.0)
            before = rss_kb(pid)
            sockets = await asyncio.gather(*(connect(i) for i in range(n)))
            await asyncio.sleep(3.0)
            after = rss_kb(pid)
            await asyncio.gather(*(ws.close() for ws in [*warm, *sockets]))
    return (after - before) / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    for compress, label in ((0, "no compression"), (15, "permessage-deflate negotiated")):
        per = await one(compress, args.connections)
        print(f"python-socketio peer, {args.connections} idle connections, {label}: {per:.1f} KiB per connection")


if __name__ == "__main__":
    asyncio.run(main())
