"""The load client: C WebSocket connections spread over P client processes (uvloop each).

Each connection is a bare asyncio Protocol speaking RFC 6455 itself (HTTP upgrade, unmasked server
frames, masked client frames, pong for ping, close handshake): a few µs of Python per frame, so the
client is not what limits a 2-core box (aiohttp's ClientSession.ws_connect costs about as much CPU per
connect as the server it measures).

Two protocols:
- "notify": GET /ws/notifications?token=T; the first frame is {"type": "unread_count"…};
  notification frames carry {"data": {"metadata": {"sent_at": unix s, "seq": n}}}.
- "sio" (and "node": the same protocol): raw Engine.IO 4 / Socket.IO 5 over a WebSocket (no
  python-socketio client, which would cost more CPU than the server under test):
  GET /socket.io/?EIO=4&transport=websocket, read the "0{…}" open packet, send "40" + auth JSON, the
  connect is done at "40{…}"; events are "42[name, payload]", the payload the same frame as notify's;
  server pings "2" are answered "3".

A frame's receive time is taken in data_received, before parsing; the latency of a delivery is
receive time − metadata.sent_at (same machine, same clock). The orchestrator drives the processes
through `ClientPool` (commands over a pipe); each process answers with compact arrays.
"""

from __future__ import annotations

import array
import asyncio
import base64
import multiprocessing as mp
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PROTOCOLS = ("notify", "sio", "node")  # "node" (bench/peer_node) speaks what "sio" speaks
CLOSE_TIMEOUT_S = 10.0
OPEN_TIMEOUT_S = 30.0

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 §5.3)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    if n:
        repeated = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return head + key + payload


# ---------------------------------------------------------------- inside a client process


class _ClientState:
    def __init__(self, protocol: str) -> None:
        import orjson

        self.protocol = protocol
        self.sio = protocol in ("sio", "node")
        self.loads = orjson.loads
        self.conns: list[_WSConn] = []
        self.seq = array.array("q")
        self.conn_index = array.array("l")
        self.latency = array.array("d")
        self.received_at = array.array("d")
        self.other_frames = 0
        self.unexpected_closes = 0
        self.closing = False


class _WSConn(asyncio.Protocol):
    """One WebSocket client connection."""

    def __init__(self, state: _ClientState, index: int, host: str, path: str, auth: str | None,
                 opened: asyncio.Future[None]) -> None:
        self.state, self.index, self.host, self.path, self.auth = state, index, host, path, auth
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ready = False  # first frame (notify) / socket.io connect (sio) seen
        self.fragments: list[bytes] = []
        self._frag_opcode = _OP_TEXT
        self.close_code: int | None = None
        self.lost: asyncio.Future[None] = opened.get_loop().create_future()
        self.error: str | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        t = time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status + b" ":
                self._fail(f"upgrade refused: {status.decode(errors='replace')}")
                return
            del buf[: end + 4]
            self.upgraded = True
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            offset = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = (buf[2] << 8) | buf[3]
                offset = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = int.from_bytes(buf[2:10], "big")
                offset = 10
            if b1 & 0x80:  # a masked server frame: not expected, but legal to parse
                offset += 4
            if len(buf) < offset + n:
                return
            payload = bytes(buf[offset: offset + n])
            del buf[: offset + n]
            opcode = b0 & 0x0F
            if opcode == _OP_CONT:
                self.fragments.append(payload)
                if not b0 & 0x80:
                    continue
                payload, opcode = b"".join(self.fragments[1:]), self._frag_opcode
                payload = self.fragments[0] + payload
                self.fragments = []
            elif not b0 & 0x80:
                self._frag_opcode, self.fragments = opcode, [payload]
                continue
            if opcode == _OP_TEXT:
                self._text(payload, t)
            elif opcode == _OP_PING:
                self._send(_OP_PONG, payload)
            elif opcode == _OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if not self.ready:
                    self._fail(f"closed with {self.close_code} before ready")
                self._send(_OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready:
            self._fail(f"connection lost before ready: {exc!r}")
        elif not self.state.closing:
            self.state.unexpected_closes += 1
        if not self.lost.done():
            self.lost.set_result(None)

    # -- protocol logic
    def _text(self, payload: bytes, t: float) -> None:
        state = self.state
        if state.sio:
            if payload[:2] == b"42":
                frame = state.loads(payload[2:])[1]
            elif payload == b"2":
                self._send(_OP_TEXT, b"3")
                return
            elif not self.ready and payload[:1] == b"0":
                self._send(_OP_TEXT, b"40" + (self.auth or "").encode())
                return
            elif not self.ready and payload[:2] == b"40":
                self._ready()
                return
            elif payload[:2] == b"44":
                self._fail(f"socket.io connect refused: {payload[:100]!r}")
                return
            else:
                state.other_frames += 1
                return
        else:
            frame = state.loads(payload)
            if not self.ready:
                if frame.get("type") == "unread_count":
                    self._ready()
                else:
                    self._fail(f"first frame not unread_count: {payload[:80]!r}")
                return
        if frame.get("type") == "notification":
            meta = frame["data"]["metadata"]
            state.seq.append(meta["seq"])
            state.conn_index.append(self.index)
            state.latency.append(t - meta["sent_at"])
            state.received_at.append(t)
        else:
            state.other_frames += 1

    def _ready(self) -> None:
        self.ready = True
        if not self.opened.done():
            self.opened.set_result(None)

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why[:160]
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(self.error))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_client_frame(opcode, payload))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(_OP_CLOSE, struct.pack("!H", 1000))


async def _connect(state: _ClientState, index: int, url: str, auth: str | None,
                   sem: asyncio.Semaphore) -> tuple[_WSConn | None, str | None, float]:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    async with sem:
        opened: asyncio.Future[None] = loop.create_future()
        conn = _WSConn(state, index, parts.netloc, path, auth, opened)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: conn, parts.hostname, parts.port), OPEN_TIMEOUT_S)
            await asyncio.wait_for(opened, OPEN_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 — reported as a failed open
            if conn.transport is not None:
                conn.transport.abort()
            return None, conn.error or f"{type(exc).__name__}: {exc}"[:160], 0.0
    return conn, None, time.time()


async def _client_main(pipe: Any, protocol: str) -> None:
    state = _ClientState(protocol)
    loop = asyncio.get_running_loop()
    while True:
        command, args = await loop.run_in_executor(None, pipe.recv)
        if command == "open":
            pipe.send(await _open(state, args["targets"], args["concurrency"], args["timeout_s"]))
        elif command == "reset":
            for a in (state.seq, state.conn_index, state.latency, state.received_at):
                del a[:]
            state.other_frames = 0
            pipe.send({"ok": True})
        elif command == "count":
            pipe.send({"frames": len(state.seq), "last_at": state.received_at[-1] if state.received_at else 0.0,
                       "unexpected_closes": state.unexpected_closes})
        elif command == "collect":
            pipe.send({
                "seq": state.seq.tobytes(), "conn": state.conn_index.tobytes(),
                "latency": state.latency.tobytes(), "received_at": state.received_at.tobytes(),
                "other_frames": state.other_frames, "unexpected_closes": state.unexpected_closes,
                "open": sum(1 for c in state.conns if c.transport is not None and not c.transport.is_closing()),
            })
        elif command == "close":
            pipe.send(await _close_all(state))
        elif command == "exit":
            pipe.send({"ok": True})
            return
        else:
            pipe.send({"error": f"unknown command {command!r}"})


async def _open(state: _ClientState, targets: Sequence[tuple[int, str, str | None]],
                concurrency: int, timeout_s: float) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    started = time.time()
    tasks = [asyncio.create_task(_connect(state, index, url, auth, sem)) for index, url, auth in targets]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    errors: dict[str, int] = {}
    ok, last = 0, started
    for task in done:
        conn, error, at = task.result()
        if conn is not None:
            state.conns.append(conn)
            ok += 1
            last = max(last, at)
        else:
            key = (error or "?")[:70]
            errors[key] = errors.get(key, 0) + 1
    return {"requested": len(targets), "opened": ok, "failed": len(done) - ok, "pending": len(pending),
            "started_at": started, "last_opened_at": last, "errors": errors}


async def _close_all(state: _ClientState) -> dict[str, Any]:
    state.closing = True
    conns, state.conns = state.conns, []
    for conn in conns:
        conn.close()
    try:
        await asyncio.wait_for(asyncio.gather(*(c.lost for c in conns)), CLOSE_TIMEOUT_S)
    except TimeoutError:
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
    state.closing = False
    return {"closed": len(conns)}


def _process_entry(pipe: Any, protocol: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client_main(pipe, protocol))


# ---------------------------------------------------------------- the orchestrator's side


@dataclass
class Deliveries:
    """Every notification frame received by any connection since the last reset."""

    seq: array.array = field(default_factory=lambda: array.array("q"))
    conn: array.array = field(default_factory=lambda: array.array("l"))
    latency_s: array.array = field(default_factory=lambda: array.array("d"))
    received_at: array.array = field(default_factory=lambda: array.array("d"))
    other_frames: int = 0
    unexpected_closes: int = 0
    open: int = 0


class ClientPool:
    """P client processes; connections are dealt round-robin over them."""

    def __init__(self, protocol: str, processes: int = 2) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(protocol)
        ctx = mp.get_context("spawn")
        self.protocol = protocol
        self.pipes = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_entry, args=(child, protocol), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        self._next_index = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def _ask(self, i: int, command: str, args: dict[str, Any] | None = None, timeout_s: float = 120.0) -> Any:
        pipe = self.pipes[i]
        pipe.send((command, args or {}))
        ready = await asyncio.to_thread(pipe.poll, timeout_s)
        if not ready:
            raise TimeoutError(f"client process {i} did not answer {command!r} in {timeout_s}s")
        return pipe.recv()

    async def _all(self, command: str, args_per: Sequence[dict[str, Any]] | None = None,
                   timeout_s: float = 120.0) -> list[Any]:
        return list(await asyncio.gather(*(
            self._ask(i, command, args_per[i] if args_per else None, timeout_s) for i in range(len(self.pipes))
        )))

    async def open(self, targets: Sequence[tuple[str, str | None]], concurrency: int = 200,
                   timeout_s: float = 60.0) -> dict[str, Any]:
        """Open these connections ((url, sio auth json)), `concurrency` in flight per process, and wait
        until each got its first frame. Returns counts and the wall time from the first connect to the
        last first-frame."""
        per: list[list[tuple[int, str, str | None]]] = [[] for _ in self.pipes]
        first_index = self._next_index
        for url, auth in targets:
            per[self._next_index % len(self.pipes)].append((self._next_index, url, auth))
            self._next_index += 1
        answers = await self._all("open", [{"targets": p, "concurrency": concurrency, "timeout_s": timeout_s}
                                           for p in per], timeout_s + 30)
        errors: dict[str, int] = {}
        for a in answers:
            for k, v in a["errors"].items():
                errors[k] = errors.get(k, 0) + v
        started = min(a["started_at"] for a in answers)
        last = max(a["last_opened_at"] for a in answers)
        return {
            "first_index": first_index,
            "requested": sum(a["requested"] for a in answers),
            "opened": sum(a["opened"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "pending": sum(a["pending"] for a in answers),
            "open_s": last - started,
            "errors": errors,
        }

    async def reset(self) -> None:
        await self._all("reset")

    async def collect(self) -> Deliveries:
        out = Deliveries()
        for a in await self._all("collect"):
            for name, typecode in (("seq", "q"), ("conn", "l"), ("latency", "d"), ("received_at", "d")):
                part = array.array(typecode)
                part.frombytes(a[name])
                getattr(out, "latency_s" if name == "latency" else name).extend(part)
            out.other_frames += a["other_frames"]
            out.unexpected_closes += a["unexpected_closes"]
            out.open += a["open"]
        return out

    async def count(self) -> dict[str, Any]:
        answers = await self._all("count", timeout_s=30)
        return {"frames": sum(a["frames"] for a in answers), "last_at": max(a["last_at"] for a in answers),
                "unexpected_closes": sum(a["unexpected_closes"] for a in answers)}

    async def close_connections(self) -> None:
        await self._all("close", timeout_s=60)

    async def shutdown(self) -> None:
        try:
            await self._all("close", timeout_s=60)
            await self._all("exit", timeout_s=10)
        except Exception:  # noqa: BLE001 — the processes are stopped below anyway
            pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


def client_env_ok() -> None:
    """Fail early when the client cannot hold many sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
