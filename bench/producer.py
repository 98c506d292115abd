"""The producer process: enqueues events at a fixed rate (or as fast as it can), each with its send time.

notify: `notify_server.ingest.producer.enqueue_event(redis, event)`, the real producer path (an arq job), with
`metadata = {"sent_at": time.time(), "seq": n}` taken just before the enqueue call.
sio: `socketio.AsyncRedisManager(write_only=True).emit("notification", frame, room="user:<id>")`, the
same frame as notify-server pushes (built here: the peer stores nothing), to the user's room.
node: what @socket.io/redis-emitter publishes and @socket.io/redis-adapter consumes (bench/peer_node):
one PUBLISH per event of msgpack `[uid, packet, opts]` with packet `{"type": 2 (EVENT), "data":
["notification", frame], "nsp": "/"}` and opts `{"rooms": ["user:<id>"], "except": [], "flags": {}}`
on channel `<key>#/#user:<id>#` (key "socket.io" unless the server was given another); an event to
several users is one PUBLISH on `<key>#/#` listing all their rooms, as the emitter does.

Driven by `ProducerPool` from the orchestrator; runs in its own process (uvloop) so its CPU is its own.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

INFLIGHT_MAX = 256  # enqueues awaiting Redis at once; at the cap the producer falls behind (reported)


def user_for_seq(seq: int, users: int) -> int:
    """Which user (index) event `seq` goes to: every user in turn, in a scrambled order (so the
    orchestrator can check that each frame reached the right user's tabs)."""
    return (seq * 7919) % users


def sio_frame(seq: int, sent_at: float, provider: str = "Dr. Smith", claim_id: str = "abc123") -> dict[str, Any]:
    """The notification frame notify-server would push, with a fresh id: same size on the wire."""
    return {"type": "notification", "data": {
        "notification_id": str(uuid.uuid4()), "title": "Claim Rejected",
        "body": f"Your claim for {provider} has been rejected.", "priority": "HIGH",
        "action_url": f"/claims/{claim_id}", "event_type": "CLAIM_REJECTED",
        "metadata": {"sent_at": sent_at, "seq": seq},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }}


class _Sender:
    async def start(self) -> None: ...

    async def send(self, seq: int, tag: str, recipients: Sequence[str]) -> None: ...

    async def stop(self) -> None: ...


class _NotifySender(_Sender):
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    async def start(self) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(self.redis_url, max_connections=INFLIGHT_MAX + 8)

    async def send(self, seq: int, tag: str, recipients: Sequence[str]) -> None:
        from notify_server.ingest.producer import enqueue_event

        await enqueue_event(self.redis, {
            "event_id": f"{tag}-{seq}",
            "event_type": "CLAIM_REJECTED",
            "recipients": [{"user_id": u} for u in recipients],
            "data": {"provider_name": "Dr. Smith", "claim_id": str(seq)},
            "metadata": {"sent_at": time.time(), "seq": seq},
        })

    async def stop(self) -> None:
        await self.redis.aclose()


class _SioSender(_Sender):
    def __init__(self, redis_url: str, channel: str) -> None:
        self.redis_url = redis_url
        self.channel = channel

    async def start(self) -> None:
        import socketio

        self.mgr = socketio.AsyncRedisManager(self.redis_url, channel=self.channel, write_only=True)

    async def send(self, seq: int, tag: str, recipients: Sequence[str]) -> None:
        frame = sio_frame(seq, time.time(), claim_id=str(seq))
        rooms = [f"user:{u}" for u in recipients]
        await self.mgr.emit("notification", frame, room=rooms[0] if len(rooms) == 1 else rooms)

    async def stop(self) -> None:
        redis = getattr(self.mgr, "redis", None)
        if redis is not None:
            await redis.aclose()


EMITTER_UID = "emitter"  # the uid @socket.io/redis-emitter stamps; any value but an adapter's own uid works
SIO_EVENT = 2  # socket.io-parser PacketType.EVENT


def emitter_message(frame: dict[str, Any], rooms: Sequence[str], key: str = "socket.io",
                    nsp: str = "/") -> tuple[str, bytes]:
    """(channel, payload) of `emitter.to(rooms).emit("notification", frame)` in the Socket.IO Redis
    emitter's wire format: the adapter psubscribes to `<key>#<nsp>#*`, skips a room channel whose room
    it has no socket in, msgpack-decodes `[uid, packet, opts]` and broadcasts the packet to opts.rooms."""
    import msgpack

    packet = {"type": SIO_EVENT, "data": ["notification", frame], "nsp": nsp}
    opts = {"rooms": list(rooms), "except": [], "flags": {}}
    channel = f"{key}#{nsp}#" + (f"{rooms[0]}#" if len(rooms) == 1 else "")
    return channel, msgpack.packb([EMITTER_UID, packet, opts])


class _NodeSender(_Sender):
    """Socket.IO Redis emitter format, for bench/peer_node (socket.io + @socket.io/redis-adapter)."""

    def __init__(self, redis_url: str, key: str) -> None:
        self.redis_url = redis_url
        self.key = key or "socket.io"

    async def start(self) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(self.redis_url, max_connections=INFLIGHT_MAX + 8)

    async def send(self, seq: int, tag: str, recipients: Sequence[str]) -> None:
        frame = sio_frame(seq, time.time(), claim_id=str(seq))
        channel, payload = emitter_message(frame, [f"user:{u}" for u in recipients], self.key)
        await self.redis.publish(channel, payload)

    async def stop(self) -> None:
        await self.redis.aclose()


def _sender_for(protocol: str, redis_url: str, channel: str) -> _Sender:
    if protocol == "notify":
        return _NotifySender(redis_url)
    if protocol == "node":
        return _NodeSender(redis_url, channel)
    return _SioSender(redis_url, channel)


async def _run(sender: _Sender, args: dict[str, Any]) -> dict[str, Any]:
    """Send `count` events at `rate` per second (0 = as fast as possible, INFLIGHT_MAX at once)."""
    count, rate, tag = args["count"], args["rate"], args["tag"]
    users: list[str] = args["users"]
    per_event: int = args.get("recipients_per_event", 1)
    seq0: int = args.get("seq0", 0)
    rng = random.Random(args.get("seed", 1))
    sem = asyncio.Semaphore(INFLIGHT_MAX)
    errors: dict[str, int] = {}
    behind_max_s = 0.0
    tasks: set[asyncio.Task[None]] = set()

    call_s: list[float] = []  # how long each enqueue call took (a slow producer path inflates latency)

    async def one(seq: int, recipients: Sequence[str]) -> None:
        t = time.monotonic()
        try:
            await sender.send(seq, tag, recipients)
            call_s.append(time.monotonic() - t)
        except Exception as exc:  # noqa: BLE001 — counted and reported
            key = f"{type(exc).__name__}: {exc}"[:100]
            errors[key] = errors.get(key, 0) + 1
        finally:
            sem.release()

    started = time.time()
    t0 = time.monotonic()
    for i in range(count):
        if rate:
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            else:
                behind_max_s = max(behind_max_s, -delay)
        await sem.acquire()
        recipients = users if per_event >= len(users) else (
            [users[user_for_seq(seq0 + i, len(users))]] if per_event == 1 else rng.sample(users, per_event))
        task = asyncio.create_task(one(seq0 + i, recipients))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*list(tasks))
    elapsed = time.monotonic() - t0
    call_s.sort()
    return {"sent": count - sum(errors.values()), "errors": errors, "started_at": started,
            "elapsed_s": elapsed, "rate_achieved": count / elapsed if elapsed else 0.0,
            "behind_max_s": behind_max_s, "call_s": call_s}


async def _producer_main(pipe: Any, protocol: str, redis_url: str, channel: str) -> None:
    sender = _sender_for(protocol, redis_url, channel)
    await sender.start()
    loop = asyncio.get_running_loop()
    try:
        while True:
            command, args = await loop.run_in_executor(None, pipe.recv)
            if command == "run":
                pipe.send(await _run(sender, args))
            elif command == "exit":
                pipe.send({"ok": True})
                return
    finally:
        await sender.stop()


def _process_entry(pipe: Any, protocol: str, redis_url: str, channel: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_producer_main(pipe, protocol, redis_url, channel))


class ProducerPool:
    """K producer processes sharing the offered rate (event seq numbers interleaved). `channel`: the
    python-socketio channel (sio), or the adapter key, the channel prefix (node)."""

    def __init__(self, protocol: str, redis_url: str, processes: int = 1, channel: str = "socketio") -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_entry, args=(child, protocol, redis_url, channel), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def run(self, *, count: int, rate: float, users: Sequence[str], tag: str, seq0: int = 0,
                  recipients_per_event: int = 1, timeout_s: float = 300.0) -> dict[str, Any]:
        """Send `count` events (seq seq0…seq0+count-1) at `rate`/s in total; returns when all are sent."""
        k = len(self.pipes)
        shares = [count // k + (1 if i < count % k else 0) for i in range(k)]
        offsets = [sum(shares[:i]) for i in range(k)]
        for i, pipe in enumerate(self.pipes):
            pipe.send(("run", {"count": shares[i], "rate": rate / k if rate else 0, "users": list(users),
                               "tag": tag, "seq0": seq0 + offsets[i], "seed": hash((tag, i)) & 0xFFFF,
                               "recipients_per_event": recipients_per_event}))

        async def answer(pipe: Any) -> dict[str, Any]:
            if not await asyncio.to_thread(pipe.poll, timeout_s):
                raise TimeoutError("producer did not finish")
            return pipe.recv()

        answers = await asyncio.gather(*(answer(p) for p in self.pipes))
        errors: dict[str, int] = {}
        for a in answers:
            for key, n in a["errors"].items():
                errors[key] = errors.get(key, 0) + n
        elapsed = max(a["elapsed_s"] for a in answers)
        calls = sorted(x for a in answers for x in a["call_s"])

        def pct(q: float) -> float | None:
            return calls[min(len(calls) - 1, round(q / 100 * (len(calls) - 1)))] * 1000 if calls else None

        return {"sent": sum(a["sent"] for a in answers), "errors": errors, "elapsed_s": elapsed,
                "enqueue_call_ms": {"p50": pct(50), "p99": pct(99), "max": pct(100)},
                "started_at": min(a["started_at"] for a in answers),
                "rate_achieved": count / elapsed if elapsed else 0.0,
                "behind_max_s": max(a["behind_max_s"] for a in answers)}

    async def shutdown(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit", {}))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
