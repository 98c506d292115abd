"""Check of the node peer's producer path: the Socket.IO Redis emitter format of bench/producer.py reaches
the room, and only the room, of a socket.io server with @socket.io/redis-adapter (bench/peer_node).

1. What the installed adapter itself publishes for `io.to("user:<id>").emit("notification", …)` (a
   second Node process with the adapter, caught by a PSUBSCRIBE here) has the channel and the
   [uid, packet, opts] shape that `bench.producer.emitter_message` builds.
2. bench/peer_node/server.js refuses a bad token (python-socketio's client, not the bench's own).
3. A message of `emitter_message` for user A reaches both of A's sockets with the frame intact, and
   not user B's; one for [A, B] (no room in the channel, both rooms in opts) reaches all three sockets.

    .venv/bin/python -m bench.peer_node_check      # exit 0 and "ok" lines, or an AssertionError
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import uuid
from typing import Any

import msgpack
import socketio
from redis.asyncio import Redis

from bench.peer_socketio import make_token
from bench.producer import emitter_message, sio_frame
from bench.stack import NODE_PEER, Processes, node_peer_argv
from tests.processes import free_port, wait_http_ok
from tests.services import redis_server, throwaway_redis_db

KEY = "socket.io"  # the adapter's and the emitter's default prefix

ADAPTER_EMIT_JS = """
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
(async () => {
  const pub = createClient({ url: process.argv[1] });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server({ adapter: createAdapter(pub, sub) });
  io.to(process.argv[2]).emit("notification", { type: "notification", data: { seq: 1 } });
  setTimeout(() => Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0)), 300);
})();
"""


async def adapter_publishes_what_we_build(redis_url: str) -> None:
    room = f"user:probe-{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub()
    await pubsub.psubscribe(f"{KEY}#/#*")
    await pubsub.get_message(timeout=1.0)  # the psubscribe confirmation
    await asyncio.to_thread(subprocess.run, ["node", "-e", ADAPTER_EMIT_JS, redis_url, room], cwd=NODE_PEER,
                            check=True, timeout=30)
    message: dict[str, Any] | None = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message and message["type"] == "pmessage":
            break
    assert message is not None, "the adapter published nothing"
    theirs = msgpack.unpackb(message["data"])
    frame = {"type": "notification", "data": {"seq": 1}}
    channel, payload = emitter_message(frame, [room], KEY)
    ours = msgpack.unpackb(payload)
    assert message["channel"].decode() == channel, (message["channel"], channel)
    assert theirs[1:] == ours[1:], (theirs, ours)  # [0] is the publisher's uid
    print(f"ok: the adapter publishes {channel!r} {theirs!r}; emitter_message builds the same")
    await pubsub.aclose()
    await redis.aclose()


async def server_delivers_emitter_messages(redis_url: str) -> None:
    secret = secrets.token_hex(16)
    port = free_port()
    with Processes() as children:
        server = children.start_command("node", node_peer_argv(port, redis_url, secret, KEY), dict(os.environ))
        await wait_http_ok(f"http://127.0.0.1:{port}/healthz", server)
        url = f"http://127.0.0.1:{port}"
        a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
        got: dict[str, list[Any]] = {"a1": [], "a2": [], "b": []}
        clients = {}
        for name, user in (("a1", a), ("a2", a), ("b", b)):
            client = socketio.AsyncClient(reconnection=False)
            client.on("notification", lambda data, name=name: got[name].append(data))
            await client.connect(url, auth={"token": make_token(secret, user)}, transports=["websocket"])
            clients[name] = client

        bad = socketio.AsyncClient(reconnection=False)
        try:
            await bad.connect(url, auth={"token": make_token("wrong secret", a)}, transports=["websocket"])
            raise AssertionError("a bad token was accepted")
        except socketio.exceptions.ConnectionError as exc:
            print(f"ok: bad token refused ({exc})")

        await asyncio.sleep(0.3)  # the adapter's psubscribe is in place since startup; the joins are local
        redis = Redis.from_url(redis_url)
        frame = sio_frame(1, 1.5, claim_id="c1")
        channel, payload = emitter_message(frame, [f"user:{a}"], KEY)
        assert channel == f"socket.io#/#user:{a}#", channel
        receivers = await redis.publish(channel, payload)
        await asyncio.sleep(0.5)
        assert got["a1"] == [frame] and got["a2"] == [frame] and got["b"] == [], got
        print(f"ok: PUBLISH {channel} ({len(payload)} bytes msgpack, {receivers} subscriber) reached both of "
              f"user {a}'s sockets, not user {b}'s")

        frame2 = sio_frame(2, 2.5, claim_id="c2")
        channel, payload = emitter_message(frame2, [f"user:{a}", f"user:{b}"], KEY)
        assert channel == "socket.io#/#", channel
        await redis.publish(channel, payload)
        await asyncio.sleep(0.5)
        assert got["a1"][1:] == [frame2] and got["a2"][1:] == [frame2] and got["b"] == [frame2], got
        print(f"ok: PUBLISH {channel} with rooms [user:{a}, user:{b}] reached all three sockets")
        await redis.aclose()
        for client in clients.values():
            await client.disconnect()
        log = server.output()
        assert "ERROR" not in log and "WARNING" not in log, log


async def main() -> None:
    with redis_server() as server_url, throwaway_redis_db(server_url) as redis_url:
        await adapter_publishes_what_we_build(redis_url)
        await server_delivers_emitter_messages(redis_url)
    print("node peer: emitter format checked")


if __name__ == "__main__":
    asyncio.run(main())
