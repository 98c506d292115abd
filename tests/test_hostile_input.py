"""Hostile input (issue 6): WebSocket frames, events, REST requests, credentials and config.

WebSocket and REST cases run against one real `serve` node (a subprocess, DEBUG logging) and one real
`worker` for the whole module: after every case the node still runs, other users still get their
notifications, and its log holds no traceback. Events are fuzzed with hypothesis through the worker's own
`process_event`. Config cases start `serve` with one bad NOTIFY_* value each.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import decimal
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg2
import pytest
import yarl
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from notify_server.core.settings import Settings
from notify_server.storage.sessions import SessionStore
from tests.helpers import process_one, worker_context
from tests.processes import REPO_ROOT, Process, free_port
from workers.context import WorkerContext

MAX_FRAME_BYTES = 4096  # config.yaml's websocket.max_frame_bytes
REQUEST_MAX_BYTES = 16384  # config.yaml's limits.request_max_bytes


# ---------------------------------------------------------------- a raw WebSocket client


class RawWebSocket:
    """A client that speaks the WebSocket wire format itself, so it can send what no library would
    (invalid UTF-8, unmasked or oversized frames, reserved opcodes) and stop reading when told."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    def connect(cls, port: int, token: str, *, recv_buffer: int | None = None, path: str = "/ws/notifications",
                headers: dict[str, str] | None = None) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        sock.sendall(
            f"GET {path}?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
        )
        ws = cls(sock)
        while b"\r\n\r\n" not in ws.buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            ws.buffer += chunk
        head, ws.buffer = ws.buffer.split(b"\r\n\r\n", 1)
        ws.status = int(head.split(b" ", 2)[1])
        return ws

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0,
                   declared_length: int | None = None) -> None:
        length = len(payload) if declared_length is None else declared_length
        header = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        mask_bit = 0x80 if mask else 0
        if length < 126:
            header += bytes([mask_bit | length])
        elif length < 1 << 16:
            header += bytes([mask_bit | 126]) + struct.pack("!H", length)
        else:
            header += bytes([mask_bit | 127]) + struct.pack("!Q", length)
        if mask:
            key = os.urandom(4)
            header += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + payload)

    def send_text(self, text: bytes) -> None:
        self.send_frame(0x1, text)

    def read_frame(self, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; (-1, b"") when the connection ended."""
        self.sock.settimeout(timeout_s)
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return -1, b""
            if not chunk:
                return -1, b""
            self.buffer += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        if len(self.buffer) < 2:
            return None
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(self.buffer) < 4:
                return None
            (length,) = struct.unpack("!H", self.buffer[2:4])
            offset = 4
        elif length == 127:
            if len(self.buffer) < 10:
                return None
            (length,) = struct.unpack("!Q", self.buffer[2:10])
            offset = 10
        if len(self.buffer) < offset + length:
            return None
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return opcode, payload

    def read_until_close(self, timeout_s: float = 10.0) -> tuple[int | None, list[bytes]]:
        """Read text frames until a Close frame (its code) or the end of the connection (None)."""
        texts: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("connection still open")
            try:
                opcode, payload = self.read_frame(remaining)
            except TimeoutError:
                raise AssertionError("connection still open") from None
            if opcode == 0x8:
                return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005), texts
            if opcode == -1:
                return None, texts
            if opcode == 0x1:
                texts.append(payload)

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- one node and one worker for the module


def _wait_http(url: str, process: Process, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise AssertionError(f"exited early:\n{process.output()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not up:\n{process.output()}")


class Node:
    def __init__(self, process: Process, port: int, worker: Process) -> None:
        self.process = process
        self.port = port
        self.worker = worker
        self.url = f"http://127.0.0.1:{port}"

    def assert_healthy(self) -> None:
        """Still running, and nothing in its log or the worker's that looks like a crash."""
        assert self.process.popen.poll() is None, self.process.output()
        assert self.worker.popen.poll() is None, self.worker.output()
        for process, markers in ((self.process, ("Traceback", "ERROR")), (self.worker, ("Traceback",))):
            output = process.output()
            for marker in markers:
                assert marker not in output, f"{marker} in {process.log_path.name}:\n{output[-3000:]}"


@pytest.fixture(scope="module")
def node(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(
        NOTIFY_DATABASE_URL=database_url, NOTIFY_REDIS_URL=redis_url, PYTHONPATH=str(REPO_ROOT),
        NOTIFY_LOG_LEVEL="DEBUG", NOTIFY_SERVER_NODE_ID="hostile-node", NOTIFY_WORKER_POLL_DELAY_S="0.01",
        NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S="2",
    )
    with _running_node(env, tmp_path_factory.mktemp("hostile")) as started:
        yield started


@contextlib.contextmanager
def _running_node(env: dict[str, str], logs: Path) -> Iterator[Node]:
    """A `serve` node and a `worker` with this environment, up (readyz 200) until the block ends."""
    port = free_port()
    process = Process(["serve", "--port", str(port)], env, logs / "serve.log")
    worker = Process(["worker"], env, logs / "worker.log")
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", process)
        yield Node(process, port, worker)
    finally:
        process.stop()
        worker.stop()


def claim_event(event_id: str, *users: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "CLAIM_REJECTED",
        "recipients": [{"user_id": user, "email": f"{user}@mail.example"} for user in users],
        "data": {"provider_name": "Dr. Smith", "claim_id": event_id},
        **extra,
    }


async def emit(redis_client: Redis, event: dict[str, Any]) -> None:
    """The README's raw producer calls."""
    now_ms = int(time.time() * 1000)
    job = {"t": None, "f": "process_event", "a": [event], "k": {}, "et": now_ms}
    async with redis_client.pipeline(transaction=True) as pipe:
        pipe.set(f"arq:job:{event['event_id']}", orjson.dumps(job), px=86_400_000, nx=True)
        pipe.zadd("notify:events", {event["event_id"]: now_ms})
        await pipe.execute()


async def next_notification(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        message = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        assert message.type is WSMsgType.TEXT, (message.type, message.data)
        frame = orjson.loads(message.data)
        if frame["type"] == "notification":
            return frame["data"]


class Bystander:
    """Another user on the same node: gets its notification, promptly, after each hostile case."""

    def __init__(self, node: Node, redis_client: Redis, ws: aiohttp.ClientWebSocketResponse, user: str) -> None:
        self.node, self.redis, self.ws, self.user = node, redis_client, ws, user
        self.latencies: list[float] = []

    async def still_served(self) -> None:
        event_id = f"bystander-{uuid.uuid4().hex[:8]}"
        sent = time.monotonic()
        await emit(self.redis, claim_event(event_id, self.user))
        assert (await next_notification(self.ws))["action_url"] == f"/claims/{event_id}"
        self.latencies.append(time.monotonic() - sent)


@pytest.fixture
async def bystander(node: Node, sessions: SessionStore, redis_client: Redis) -> AsyncIterator[Bystander]:
    # A new user id per test: the module's node may not have dropped the previous test's socket yet.
    user = f"bystander-{uuid.uuid4().hex[:8]}"
    token = (await sessions.create(user, 600)).token
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{node.url}/ws/notifications", params={"token": token})
        first = orjson.loads((await ws.receive(timeout=5)).data)
        assert first["type"] == "unread_count"
        yield Bystander(node, redis_client, ws, user)
        await ws.close()


async def raw_tab(node: Node, sessions: SessionStore, user: str) -> RawWebSocket:
    token = (await sessions.create(user, 600)).token
    ws = await asyncio.to_thread(RawWebSocket.connect, node.port, token)
    assert ws.status == 101
    opcode, payload = await asyncio.to_thread(ws.read_frame)
    assert opcode == 0x1 and orjson.loads(payload)["type"] == "unread_count"
    return ws


# ---------------------------------------------------------------- WebSocket frames


IGNORED = 0  # in an expected set: the frame may be read and ignored (the socket stays open and served)

HOSTILE_FRAMES: dict[str, tuple[dict[str, Any], set[int]]] = {
    # name: (send_frame arguments, what may happen: close codes and/or IGNORED)
    "binary": ({"opcode": 0x2, "payload": b"\x00\x01\xff" * 100}, {IGNORED}),
    "garbage-json": ({"opcode": 0x1, "payload": b'{"type": "notification", "data": {{{'}, {IGNORED}),
    "json-command": ({"opcode": 0x1, "payload": b'{"type": "mark_read", "id": "x"}'}, {IGNORED}),
    "empty-text": ({"opcode": 0x1, "payload": b""}, {IGNORED}),
    "invalid-utf8": ({"opcode": 0x1, "payload": b"caf\xc3\x28 \xff\xfe"}, {1007}),
    "over-max-frame-bytes": ({"opcode": 0x1, "payload": b"x" * (MAX_FRAME_BYTES + 1)}, {1009}),
    "binary-over-max": ({"opcode": 0x2, "payload": b"\x00" * (MAX_FRAME_BYTES * 4)}, {1009}),
    "declared-2-to-the-62-bytes": ({"opcode": 0x1, "payload": b"x" * 16, "declared_length": 1 << 62}, {1009}),
    # RFC 6455 says close; aiohttp's parser accepts it. Either way nothing breaks.
    "unmasked": ({"opcode": 0x1, "payload": b"hello", "mask": False}, {1002, IGNORED}),
    "reserved-opcode": ({"opcode": 0x3, "payload": b"x"}, {1002}),
    "rsv1-without-extension": ({"opcode": 0x1, "payload": b"x", "rsv": 4}, {1002}),
    "ping-over-125-bytes": ({"opcode": 0x9, "payload": b"p" * 126}, {1002}),
    "fragmented-control": ({"opcode": 0x9, "payload": b"p", "fin": False}, {1002}),
    "continuation-without-start": ({"opcode": 0x0, "payload": b"x"}, {1002}),
    "close-with-one-byte": ({"opcode": 0x8, "payload": b"\x03"}, {1002}),
    "close-with-invalid-code": ({"opcode": 0x8, "payload": struct.pack("!H", 999)}, {1002}),
}


@pytest.mark.parametrize("case", list(HOSTILE_FRAMES))
async def test_hostile_websocket_frame_never_crashes_the_node_nor_disturbs_other_users(
    node: Node, sessions: SessionStore, bystander: Bystander, redis_client: Redis, case: str
) -> None:
    arguments, expected = HOSTILE_FRAMES[case]
    user = f"hostile-{uuid.uuid4().hex[:8]}"
    ws = await raw_tab(node, sessions, user)
    try:
        await asyncio.to_thread(ws.send_frame, **arguments)
        # Then a notification for this socket: it is either closed with an expected code, or the frame
        # was ignored and the notification arrives.
        await emit(redis_client, claim_event(f"after-{case}", user))
        outcome = None
        deadline = time.monotonic() + 5
        while outcome is None:
            opcode, payload = await asyncio.to_thread(ws.read_frame, max(0.1, deadline - time.monotonic()))
            if opcode == 0x8:
                outcome = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            elif opcode == -1:
                outcome = -1  # dropped without a Close frame
            elif opcode == 0x1 and orjson.loads(payload)["type"] == "notification":
                outcome = IGNORED
        assert outcome in expected, f"{case}: got {outcome}, expected one of {expected}"
    finally:
        ws.close()
    await bystander.still_served()
    node.assert_healthy()


async def test_fragments_adding_up_past_max_frame_bytes_close_with_1009(
    node: Node, sessions: SessionStore, bystander: Bystander
) -> None:
    ws = await raw_tab(node, sessions, f"fragments-{uuid.uuid4().hex[:8]}")
    try:
        await asyncio.to_thread(ws.send_frame, 0x1, b"a" * 1000, fin=False)
        for _ in range(10):
            await asyncio.to_thread(ws.send_frame, 0x0, b"b" * 1000, fin=False)
        code, _ = await asyncio.to_thread(ws.read_until_close, 5)
        assert code == 1009
    finally:
        ws.close()
    await bystander.still_served()
    node.assert_healthy()


async def test_an_aiohttp_client_sending_over_max_frame_bytes_gets_1009(node: Node, sessions: SessionStore) -> None:
    token = (await sessions.create("big-sender", 600)).token
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{node.url}/ws/notifications", params={"token": token})
        await ws.receive(timeout=5)
        await ws.send_str("x" * (MAX_FRAME_BYTES + 1))
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1009)


@pytest.mark.timeout(60)
async def test_a_flood_of_ten_thousand_small_frames_leaves_other_users_unaffected(
    node: Node, sessions: SessionStore, bystander: Bystander, redis_client: Redis
) -> None:
    user = f"flooder-{uuid.uuid4().hex[:8]}"
    flooder = await raw_tab(node, sessions, user)
    frame = b"\x81\x8c" + b"\x00\x00\x00\x00" + b'{"ping": 1} '  # masked with a zero key: payload as-is

    def flood() -> None:
        for start in range(0, 10_000, 500):
            flooder.sock.sendall(frame * 500)

    started = time.monotonic()
    flooding = asyncio.create_task(asyncio.to_thread(flood))
    while not flooding.done():  # the bystander is served while the flood goes on
        await bystander.still_served()
    await flooding
    flood_s = time.monotonic() - started
    await bystander.still_served()
    # The flooder itself is still connected and served (its frames were read and ignored).
    await emit(redis_client, claim_event("to-flooder", user))
    while True:
        opcode, payload = await asyncio.to_thread(flooder.read_frame, 5)
        assert opcode == 0x1, (opcode, payload)
        if orjson.loads(payload)["type"] == "notification":
            break
    flooder.close()
    print(f"\n[figures] 10,000-frame flood: sent in {flood_s:.2f}s, bystander latencies "
          f"max {max(bystander.latencies) * 1000:.0f} ms over {len(bystander.latencies)} probes")
    assert max(bystander.latencies) < 1.0
    node.assert_healthy()


# ---------------------------------------------------------------- events (hypothesis)


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[WorkerContext]:
    """What the worker's pipeline runs with."""
    async with worker_context(settings) as job_ctx:
        yield job_ctx


INJECTIONS = [
    "{x.__class__}", "{provider_name.__class__.__mro__}", "{0}", "{claim_id[0]}", "{}", "{{", "}}", "{",
    "{!r}", "{provider_name!r:>10}", "%s%s%n", "${jndi:ldap://x}", "{{7*7}}", "<script>alert(1)</script>",
    "'; DROP TABLE notifications; --", "' OR '1'='1", "\\x00", "\u202e", "𝕏" * 3, "\ud7ff", "é" * 50,
]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40), st.sampled_from(INJECTIONS),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12,
)
weird_text = st.one_of(
    st.text(max_size=30), st.sampled_from(INJECTIONS), st.text(min_size=190, max_size=230),
    st.just("x" * 20_000), st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
)
anything = st.one_of(json_values, weird_text)


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"d": value}
    return value


def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any], one_in: int = 6) -> Any:
    """Usually a valid value, one time in `one_in` a hostile one: most events get past validation to the
    interesting parts (rendering, storing), and every field is attacked often enough."""
    return draw(hostile if draw(st.integers(0, one_in - 1)) == 0 else valid)


# Text Postgres can hold (no NUL, no lone surrogate): what a valid event carries, any unicode otherwise.
clean_text = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=60)
template_values = st.one_of(
    st.sampled_from(INJECTIONS), clean_text, st.text(alphabet="{}.[]_!:x0", max_size=30),
    clean_text.map(lambda t: t * 50),
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.none(),
)


@st.composite
def recipients(draw: st.DrawFn) -> dict[str, Any]:
    recipient = {"user_id": mostly(draw, clean_text.filter(bool), weird_text)}
    if draw(st.booleans()):
        valid_email = st.from_regex(r"[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,20}\.(com|org|example)", fullmatch=True)
        recipient["email"] = mostly(draw, valid_email, st.one_of(st.none(), st.emails(), weird_text, anything))
    return recipient


@st.composite
def events(draw: st.DrawFn) -> Any:
    """A CLAIM_REJECTED event whose fields are each, now and then, replaced by adversarial values; the
    template variables always are (injections, unicode, huge strings, numbers)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(anything)  # not even an object
    data = {
        "provider_name": mostly(draw, template_values, anything),
        "claim_id": mostly(draw, template_values, anything),
    }
    data.update(draw(st.dictionaries(st.one_of(st.sampled_from(INJECTIONS), clean_text), template_values, max_size=3)))
    if draw(st.integers(0, 5)) == 0:
        data.update(draw(st.dictionaries(st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=20)), anything,
                                         max_size=3)))
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.one_of(anything, st.just({"provider_name": deep(40), "claim_id": "c"})))
    event: dict[str, Any] = {
        "event_id": mostly(draw, st.uuids().map(str), weird_text, 8),
        "event_type": mostly(draw, st.just("CLAIM_REJECTED"), weird_text, 10),
        "recipients": mostly(draw, st.lists(recipients(), min_size=1, max_size=3), anything, 10),
        "data": data,
    }
    for key, strategy in (
        ("priority", st.one_of(st.sampled_from(["LOW", "NORMAL", "HIGH", "URGENT", "low", ""]), anything)),
        ("action_url", st.one_of(st.sampled_from(INJECTIONS), weird_text, anything)),
        ("metadata", st.one_of(st.dictionaries(st.text(max_size=10), json_values, max_size=5), anything,
                               st.just({"deep": deep(40)}), st.just({"blob": "x" * 5000}))),
        ("colour", anything),
    ):
        if draw(st.integers(0, 4)) == 0:
            event[key] = draw(strategy)
    return event


def _literal(value: Any) -> str:
    """How the template is documented to insert a value: literally."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _storable(text: Any) -> bool:
    """Whether Postgres could hold this text at all (else nothing can have been stored under it)."""
    if not isinstance(text, str) or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _rows(database_url: str, event_id: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT recipient_id, recipient_email, title, body, priority, action_url, metadata FROM notifications"
                " WHERE event_id = %s ORDER BY seq", (event_id,),
            )
            rows = cur.fetchall()
            cur.execute("DELETE FROM notifications WHERE event_id = %s", (event_id,))
        conn.commit()
        return rows
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=events())
async def test_adversarial_events_are_rejected_with_a_reason_or_stored_literally(
    ctx: WorkerContext, settings: Settings, raw: Any
) -> None:
    """The pipeline never raises (StoreUnavailable would mean a fault; none is injected here): each event is
    rejected with a reason, or stored with its values inserted literally (no template evaluation)."""
    result = await process_one(ctx, raw)

    assert isinstance(result, dict) and result.get("status") in ("rejected", "stored"), result
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    rows = _rows(settings.database.url, event_id) if _storable(event_id) else []
    if result["status"] == "rejected":
        assert isinstance(result.get("reason"), str) and result["reason"].strip()
        assert rows == [], "a rejected event stored something"
        return
    recipients = {r["user_id"]: r.get("email") for r in reversed(raw["recipients"])}
    assert sorted(r[0] for r in rows) == sorted(recipients)
    data = raw["data"]
    for recipient_id, email, title, body, priority, action_url, metadata in rows:
        assert email == recipients[recipient_id]
        assert title == "Claim Rejected"
        assert body == f"Your claim for {_literal(data['provider_name'])} has been rejected."
        assert priority == (raw.get("priority") or "HIGH")
        override = raw.get("action_url")  # an empty one is no override: the template's URL applies
        expected_url = override if override else f"/claims/{_literal(data['claim_id'])}"
        assert action_url == expected_url
        # As JSON values: jsonb keeps numbers as numerics (6.683489402802442e+16 comes back as 66834894028024420).
        assert _as_json_numbers(metadata) == _as_json_numbers(raw.get("metadata", {}))


def _as_json_numbers(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return decimal.Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _as_json_numbers(v) for k, v in value.items()}
    return [_as_json_numbers(v) for v in value]


async def test_a_job_that_is_not_an_event_fails_alone_and_the_worker_goes_on(
    node: Node, redis_client: Redis, sessions: SessionStore
) -> None:
    """Any language can write jobs: garbage payloads under arq's keys fail that job and nothing else."""
    now_ms = int(time.time() * 1000)
    garbage = {
        "not-json": b"\x80\x04\x95 pickle?",
        "json-list": b"[1, 2, 3]",
        "other-function": orjson.dumps({"t": 1, "f": "os.system", "a": ["id"], "k": {}, "et": now_ms}),
        "two-args": orjson.dumps({"t": 1, "f": "process_event", "a": [{}, {}], "k": {}, "et": now_ms}),
        "kwargs": orjson.dumps({"t": 1, "f": "process_event", "a": [], "k": {"event": {}}, "et": now_ms}),
        "huge-try": b'{"t": 1000000000000000000000000000000, "f": "process_event", "a": [{}], "k": {}, "et": 1}',
    }
    async with redis_client.pipeline(transaction=True) as pipe:
        for job_id, payload in garbage.items():
            pipe.set(f"arq:job:{job_id}", payload, px=60_000)
            pipe.zadd("notify:events", {job_id: now_ms})
        pipe.zadd("notify:events", {"no-job-key": now_ms})
        await pipe.execute()
    await emit(redis_client, claim_event("good-after-garbage", "someone"))

    async def drained() -> bool:
        return await redis_client.zcard("notify:events") == 0

    deadline = time.monotonic() + 10
    while not await drained():
        assert time.monotonic() < deadline, "the queue was not drained"
        await asyncio.sleep(0.05)
    good = orjson.loads(await redis_client.get("arq:result:good-after-garbage"))
    assert good["r"]["status"] == "stored"
    assert node.worker.popen.poll() is None
    assert "Traceback" not in node.worker.output()


# ---------------------------------------------------------------- REST


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def log_after(process: Process, start: int, needle: str, timeout_s: float = 10.0) -> str:
    """The process's output from `start` on, once it holds `needle`: a test that asserts something is absent
    from the log first proves the line it looks at was written."""
    deadline = time.monotonic() + timeout_s
    while needle not in (output := process.output()[start:]):
        assert time.monotonic() < deadline, f"no {needle!r} in the log:\n{output}"
        await asyncio.sleep(0.05)
    return output


async def _check_error(response: aiohttp.ClientResponse, statuses: set[int]) -> dict[str, Any]:
    assert response.status < 500, f"{response.method} {response.url} -> {response.status}"
    assert response.status in statuses, f"{response.method} {response.url} -> {response.status}"
    assert response.content_type == "application/json", response.content_type
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body


BAD_IDS = [
    "not-a-uuid", "1", "-1", "0" * 5000, "' OR 1=1 --", "%00", "%ff%fe", "..%2F..%2Fetc%2Fpasswd", "é", "%F0%9F%92%A9",
    "00000000-0000-0000-0000-000000000000", "{x.__class__}", "null", "[]",
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
async def test_mark_read_with_a_bad_id_is_a_json_404(node: Node, sessions: SessionStore, bad_id: str) -> None:
    token = (await sessions.create("rest-user", 600)).token
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{node.url}/api/notifications/{bad_id}/read", headers=_auth(token))
        await _check_error(response, {404, 414, 400})
    node.assert_healthy()


BAD_QUERIES = [
    {"limit": "0"}, {"limit": "-1"}, {"limit": "10" * 20}, {"limit": "1e3"}, {"limit": "abc"}, {"limit": "NaN"},
    {"limit": "101"}, {"limit": str(2**64)}, {"before": "garbage"}, {"before": "0f1b0f1b-0000-4000-8000-000000000004"},
    {"before": "' OR 1=1 --"}, {"before": "0" * 5000}, {"unread_only": "maybe"}, {"unread_only": "[]"},
]


@pytest.mark.parametrize("query", BAD_QUERIES, ids=[json.dumps(q)[:40] for q in BAD_QUERIES])
async def test_listing_with_bad_parameters_is_a_json_400(node: Node, sessions: SessionStore, query: dict[str, str]) -> None:
    token = (await sessions.create("rest-user", 600)).token
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{node.url}/api/notifications", params=query, headers=_auth(token))
        await _check_error(response, {400, 414})
    node.assert_healthy()


BODIES: dict[str, tuple[dict[str, Any], set[int]]] = {
    "garbage-json": ({"data": b"{{{not json", "headers": {"Content-Type": "application/json"}}, {200, 400}),
    "binary": ({"data": bytes(range(256)) * 4}, {200, 400}),
    "oversized": ({"data": b"x" * (REQUEST_MAX_BYTES + 1)}, {413}),
    "oversized-json": ({"data": b'{"a": "' + b"x" * (REQUEST_MAX_BYTES * 4) + b'"}',
                        "headers": {"Content-Type": "application/json"}}, {413}),
    "oversized-chunked": ({"data": None, "chunked": True}, {200, 400, 413}),
}


@pytest.mark.parametrize("path", ["/api/notifications/read-all", "/api/notifications/{id}/read",
                                  "/api/notifications/archive-all", "/api/notifications/{id}/unarchive"])
@pytest.mark.parametrize("body", list(BODIES))
async def test_bad_and_oversized_bodies_never_get_a_5xx(
    node: Node, sessions: SessionStore, path: str, body: str
) -> None:
    token = (await sessions.create("rest-user", 600)).token
    kwargs, statuses = BODIES[body]
    kwargs = dict(kwargs)
    if kwargs.pop("chunked", False):
        async def stream() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"y" * 4096

        kwargs["data"] = stream()
    url = node.url + path.replace("{id}", str(uuid.uuid4()))
    if "{id}" in path:
        statuses = statuses | {404}
    async with aiohttp.ClientSession() as http:
        response = await http.post(url, headers={**_auth(token), **kwargs.pop("headers", {})}, **kwargs)
        assert response.status < 500
        assert response.status in statuses, response.status
        if response.status >= 400:
            await _check_error(response, {response.status})
    node.assert_healthy()


@pytest.mark.parametrize("token", ["x" * 5000, "%00", "' OR 1=1 --", "{x.__class__}", "é" * 100, " "])
async def test_a_bad_token_in_the_query_closes_with_4001(node: Node, token: str) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{node.url}/ws/notifications?token={token}")
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 4001)
    node.assert_healthy()


@pytest.mark.parametrize("header", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer " + "x" * 4000}, {"Authorization": "Basic dTpw"},
    {"Authorization": "Bearer \u00e9t\u00e9"}, {"Cookie": "session_id=" + "%" * 300}, {"Cookie": "session_id="},
])
async def test_bad_credentials_are_a_json_401(node: Node, header: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/api/notifications"), ("GET", "/api/notifications/unread-count"),
                             ("POST", "/api/notifications/read-all")):
            headers = {k: v.encode("utf-8").decode("latin-1") for k, v in header.items()}
            response = await http.request(method, node.url + path, headers=headers)
            await _check_error(response, {401, 400})
    node.assert_healthy()


async def test_unknown_routes_and_methods_under_api_are_json_errors(node: Node, sessions: SessionStore) -> None:
    token = (await sessions.create("rest-user", 600)).token
    async with aiohttp.ClientSession() as http:
        for method, path, statuses in (
            ("GET", "/api/nothing-here", {404}), ("DELETE", "/api/notifications", {405}),
            ("PUT", "/api/notifications/read-all", {405}), ("GET", "/api/notifications/x/read", {405, 404}),
        ):
            response = await http.request(method, node.url + path, headers=_auth(token))
            await _check_error(response, statuses)
    node.assert_healthy()


# ---------------------------------------------------------------- credentials and private data


async def test_the_token_never_reaches_the_log_of_a_serve_process(node: Node, sessions: SessionStore) -> None:
    """DEBUG logging, a ?token= upgrade, a Bearer request, a cookie upgrade and a refused token: the log
    names no token (aiohttp's access log shows `token=[redacted]`)."""
    tokens = [(await sessions.create("log-user", 600)).token for _ in range(4)]
    refused = "refused-" + uuid.uuid4().hex
    log_start = len(node.process.output())
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{node.url}/ws/notifications", params={"token": tokens[0]})
        await ws.receive(timeout=5)
        await ws.close()
        ws = await http.ws_connect(f"{node.url}/ws/notifications", headers={"Cookie": f"session_id={tokens[1]}"})
        await ws.receive(timeout=5)
        await ws.close()
        await (await http.get(f"{node.url}/api/notifications", headers=_auth(tokens[2]))).read()
        ws = await http.ws_connect(f"{node.url}/ws/notifications?since=x&token={refused}&x=1")
        await ws.receive(timeout=5)
        await ws.close()
        # aiohttp decodes parameter names: `%74oken` is `token`, and it authenticates.
        ws = await http.ws_connect(yarl.URL(f"{node.url}/ws/notifications?%74oken={tokens[3]}&last=1", encoded=True))
        assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "unread_count"
        await ws.close()
    # The last request's access line (written when its socket ends): every line before it is there too.
    output = await log_after(node.process, log_start, "&last=1 HTTP/1.1\" 101")
    for token in (*tokens, refused):
        assert token not in output
    leaked = [m.group(0) for m in re.finditer(r"(?i)(token=|session_id=|Bearer\s)(?!\[redacted\])\S*", output)]
    assert leaked == [], leaked


@pytest.mark.parametrize("token", ["'" + "S3CRET" * 4, "abc;S3CRETS3CRET"])
async def test_a_token_with_quotes_or_semicolons_is_redacted_whole(node: Node, token: str) -> None:
    log_start = len(node.process.output())
    mark = uuid.uuid4().hex
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{node.url}/ws/notifications?mark={mark}&token={token}")
        await ws.receive(timeout=5)
        await ws.close()
    output = await log_after(node.process, log_start, f"/ws/notifications?mark={mark}&token=")  # its access line
    assert "S3CRET" not in output


async def test_no_endpoint_reveals_whether_another_users_notification_exists(
    node: Node, sessions: SessionStore, redis_client: Redis, db_pool: Any
) -> None:
    snoop = (await sessions.create("snoop", 600)).token
    await emit(redis_client, claim_event("owned", "owner"))
    deadline = time.monotonic() + 10
    while True:
        async with db_pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT notification_id FROM notifications WHERE recipient_id = 'owner'")
            row = await cur.fetchone()
        if row:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    theirs, random_id = str(row[0]), str(uuid.uuid4())
    async with aiohttp.ClientSession() as http:
        answers = []
        for candidate in (theirs, random_id):
            response = await http.post(f"{node.url}/api/notifications/{candidate}/read", headers=_auth(snoop))
            answers.append((response.status, await response.text()))
        assert answers[0] == answers[1] and answers[0][0] == 404
        listed = []
        for candidate in (theirs, random_id):
            response = await http.get(f"{node.url}/api/notifications", params={"before": candidate},
                                      headers=_auth(snoop))
            listed.append((response.status, await response.text()))
        assert listed[0] == listed[1]
        resyncs = []
        for candidate in (theirs, random_id):
            ws = await http.ws_connect(f"{node.url}/ws/notifications", params={"token": snoop, "since": candidate})
            resyncs.append([(await ws.receive(timeout=5)).data for _ in range(2)])
            await ws.close()
        assert resyncs[0] == resyncs[1]
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT read_at FROM notifications WHERE notification_id = %s", (theirs,))
        assert (await cur.fetchone())[0] is None  # and it was not marked read either


@pytest.mark.parametrize("origin", [
    "https://evil.example", "null", "http://localhost:8080.evil.example", "http://evil.localhost:8080",
    "http://localhost:8081", "https://localhost:8080", "http://127.0.0.1:8080@evil.example",
])
async def test_cookie_upgrades_from_foreign_origins_are_refused_with_403(
    node: Node, sessions: SessionStore, origin: str
) -> None:
    token = (await sessions.create("victim", 600)).token
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{node.url}/ws/notifications",
                                  headers={"Cookie": f"session_id={token}", "Origin": origin})
        assert refused.value.status == 403
        ws = await http.ws_connect(f"{node.url}/ws/notifications",
                                   headers={"Cookie": f"session_id={token}", "Origin": "http://localhost:8080"})
        assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "unread_count"
        await ws.close()


async def test_no_frame_or_response_ever_carries_a_recipient_email_or_an_event_id(
    node: Node, sessions: SessionStore, redis_client: Redis
) -> None:
    """A whole session's traffic — live frames, a catch-up replay, every REST answer, errors included —
    scanned for the recipients' emails and the events' ids."""
    users = ["scan-a", "scan-b"]
    tokens = {user: (await sessions.create(user, 600)).token for user in users}
    secrets_: set[str] = set()
    traffic: list[str] = []
    async with aiohttp.ClientSession() as http:
        sockets = {}
        for user in users:
            sockets[user] = await http.ws_connect(f"{node.url}/ws/notifications", params={"token": tokens[user]})
            traffic.append((await sockets[user].receive(timeout=5)).data)
        for n in range(6):
            event_id = f"evt-secret-{uuid.uuid4().hex}"
            event = claim_event(event_id, *users, metadata={"n": n})
            event["data"]["claim_id"] = f"claim-{n}"  # the event id itself is what must not show
            secrets_.add(event_id)
            secrets_.update(r["email"] for r in event["recipients"])
            await emit(redis_client, event)
        first_ids = []
        for user in users:
            live: list[str] = []
            while len(live) < 6:  # every frame recorded, notifications counted
                raw = (await sockets[user].receive(timeout=10)).data
                traffic.append(raw)
                frame = orjson.loads(raw)
                if frame["type"] == "notification":
                    live.append(frame["data"]["notification_id"])
            first_ids.append(live[0])
            while True:
                try:
                    traffic.append((await sockets[user].receive(timeout=0.3)).data)
                except TimeoutError:
                    break
        # The same notifications again through a catch-up and every REST answer.
        for user, first_id in zip(users, first_ids):
            ws = await http.ws_connect(f"{node.url}/ws/notifications",
                                       params={"token": tokens[user], "since": first_id})
            for _ in range(6):
                traffic.append((await ws.receive(timeout=5)).data)
            await ws.close()
            headers = _auth(tokens[user])
            for method, path, params in (
                ("GET", "/api/notifications", {"limit": "100"}), ("GET", "/api/notifications/unread-count", {}),
                ("GET", "/api/notifications", {"before": first_id}), ("GET", "/api/notifications", {"limit": "x"}),
                ("POST", f"/api/notifications/{first_id}/read", {}), ("POST", "/api/notifications/read-all", {}),
                ("POST", f"/api/notifications/{uuid.uuid4()}/read", {}),
            ):
                response = await http.request(method, node.url + path, params=params, headers=headers)
                traffic.append(await response.text())
            await sockets[user].close()
    text = "\n".join(t if isinstance(t, str) else repr(t) for t in traffic)
    assert text.count('"type":"notification"') == 22 and '"items"' in text
    found = sorted(secret for secret in secrets_ if secret in text)
    assert found == []
    assert "recipient" not in text and "event_id" not in text


# ---------------------------------------------------------------- config


BAD_ENV: list[tuple[str, str, str]] = [
    # (variable, value, the key the one line must name)
    ("NOTIFY_PORT", "99999", "server.port"), ("NOTIFY_PORT", "http", "server.port"),
    ("NOTIFY_PORT", "-1", "server.port"), ("NOTIFY_HOST", "", "server.host"),
    ("NOTIFY_DATABASE_URL", "mysql://x/y", "database.url"), ("NOTIFY_REDIS_URL", "http://x", "redis.url"),
    ("NOTIFY_DATABASE_POOL_MAX_SIZE", "0", "database.pool_max_size"),
    ("NOTIFY_DATABASE_POOL_MIN_SIZE", "50", "database.pool_min_size"),
    ("NOTIFY_SERVER_NODE_ID", "a b/c", "server.node_id"), ("NOTIFY_SERVER_SHUTDOWN_TIMEOUT_S", "0", "server.shutdown_timeout_s"),
    ("NOTIFY_HEARTBEAT_INTERVAL_S", "0", "heartbeat.interval_s"), ("NOTIFY_HEARTBEAT_INTERVAL_S", "-5", "heartbeat.interval_s"),
    ("NOTIFY_HEARTBEAT_INTERVAL_S", "nan", "heartbeat.interval_s"), ("NOTIFY_HEARTBEAT_INTERVAL_S", "1e309", "heartbeat.interval_s"),
    ("NOTIFY_HEARTBEAT_TIMEOUT_S", "ten", "heartbeat.timeout_s"),
    ("NOTIFY_SESSION_RECHECK_INTERVAL_S", "0", "session.recheck_interval_s"),
    ("NOTIFY_SESSION_DEFAULT_TTL_S", "0", "session.default_ttl_s"),
    ("NOTIFY_WEBSOCKET_MAX_FRAME_BYTES", "10", "websocket.max_frame_bytes"),
    ("NOTIFY_WEBSOCKET_ALLOWED_ORIGINS", "[1, 2]", "websocket.allowed_origins"),
    ("NOTIFY_LIMITS_MAX_CONNECTIONS_PER_USER", "0", "limits.max_connections_per_user"),
    ("NOTIFY_LIMITS_SEND_QUEUE_MAX", "1.5", "limits.send_queue_max"),
    ("NOTIFY_LIMITS_LIST_MAX", "100000", "limits.list_max"),
    ("NOTIFY_LIMITS_REQUEST_MAX_BYTES", "1", "limits.request_max_bytes"),
    ("NOTIFY_QUEUES_EVENTS", "", "queues.events"), ("NOTIFY_PUSH_JOB_EXPIRY_S", "0", "push.job_expiry_s"),
    ("NOTIFY_PUSH_STREAM_MAXLEN", "1", "push.stream_maxlen"), ("NOTIFY_PUSH_READ_BATCH", "0", "push.read_batch"),
    ("NOTIFY_PUSH_READ_BLOCK_MS", "0", "push.read_block_ms"), ("NOTIFY_PRESENCE_TTL_S", "0", "presence.ttl_s"),
    ("NOTIFY_PRESENCE_TTL_S", "2.5", "presence.ttl_s"),
    ("NOTIFY_PRESENCE_REFRESH_INTERVAL_S", "-1", "presence.refresh_interval_s"),
    ("NOTIFY_RECOVERY_MAX_REPLAY", "-1", "recovery.max_replay"), ("NOTIFY_WORKER_POLL_DELAY_S", "0", "worker.poll_delay_s"),
    ("NOTIFY_WORKER_JOB_TIMEOUT_S", "0", "worker.job_timeout_s"),
    ("NOTIFY_WORKER_MAX_TRIES", "0", "worker.max_tries"),
    ("NOTIFY_WORKER_RETRY_BACKOFF_MAX_S", "0", "worker.retry_backoff_max_s"),
    ("NOTIFY_WORKER_METRICS_PORT", "70000", "worker.metrics_port"), ("NOTIFY_LOG_LEVEL", "LOUD", "log.level"),
    ("NOTIFY_LOG_FORMAT", "xml", "log.format"), ("NOTIFY_DEV_DATA_DIR", "", "dev.data_dir"),
    ("NOTIFY_HEARTBEAT_INTERVAL", "2", "heartbeat.interval"),  # a typo: unknown key
]


def _serve_with(env: dict[str, str], timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notify_server", "serve", "--port", str(free_port())],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
    )


def _config_failures(base_env: dict[str, str], cases: list[tuple[str, str, str]]) -> list[str]:
    def run(case: tuple[str, str, str]) -> str | None:
        name, value, key = case
        result = _serve_with({**base_env, name: value})
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        problems = []
        if result.returncode == 0:
            problems.append("exit 0")
        if len(lines) != 1 or key not in lines[0]:
            problems.append(f"stderr is not one line naming {key}")
        if "Traceback" in result.stderr + result.stdout:
            problems.append("traceback")
        return f"{name}={value!r}: {', '.join(problems)}: {result.stderr.strip()[-400:]!r}" if problems else None

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return [failure for failure in pool.map(run, cases) if failure]


@pytest.fixture
def base_env(cli_env: dict[str, str]) -> dict[str, str]:
    return dict(cli_env)


@pytest.mark.timeout(120)
def test_every_invalid_notify_value_stops_serve_with_one_line_naming_the_key(base_env: dict[str, str]) -> None:
    assert _config_failures(base_env, BAD_ENV) == []


@pytest.mark.parametrize(("name", "value", "key"), [
    ("NOTIFY_HOST", "no-such-host.invalid", "server.host"),
    ("NOTIFY_HOST", "256.1.1.1", "server.host"),
])
def test_an_unusable_host_stops_serve_with_one_line_naming_it(
    base_env: dict[str, str], name: str, value: str, key: str
) -> None:
    assert _config_failures(base_env, [(name, value, key)]) == []


def test_a_malformed_list_value_stops_serve_with_one_line_naming_the_key(base_env: dict[str, str]) -> None:
    assert _config_failures(base_env, [("NOTIFY_WEBSOCKET_ALLOWED_ORIGINS", "[a, b", "websocket.allowed_origins")]) == []


def test_a_port_already_in_use_stops_serve_with_one_line(base_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "notify_server", "serve", "--port", str(port)],
            env=base_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=20, check=False,
        )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and str(port) in lines[0], result.stderr


@pytest.mark.parametrize(("text", "key"), [
    ("heartbeat: {interval_s: 0}\n", "heartbeat.interval_s"),
    ("heartbeat: [1, 2]\n", "heartbeat"),
    ("hearbeat: {interval_s: 1}\n", "hearbeat"),
    ("templates: {X: {title: 't', body: '{x.__class__}'}}\n", "templates.X"),
    ("templates: {X: {title: 't', body: '{x[0]}'}}\n", "templates.X"),
    ("templates: {X: {title: 't', body: '{x!r}'}}\n", "templates.X"),
    ("templates: {X: {title: 't', body: 'b', priority: SOON}}\n", "templates.X"),
    ("limits: {send_queue_max: 0\n", "line"),
    ("- just a list\n", "config"),
])
def test_a_bad_config_file_stops_serve_with_one_line_naming_the_key(
    base_env: dict[str, str], tmp_path: Path, text: str, key: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = _serve_with({**base_env, "NOTIFY_CONFIG": str(config)})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and key in lines[0], result.stderr


# ---------------------------------------------------------------- oversized headers (a node of their own)


@pytest.fixture
def quiet_node(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Node]:
    """A node at the default log level (INFO), apart from the module's node, whose log this case dirties."""
    env = dict(cli_env, NOTIFY_SERVER_NODE_ID="header-node", NOTIFY_WORKER_POLL_DELAY_S="0.01")
    with _running_node(env, tmp_path) as started:
        yield started


def _oversized_cookie(token: str) -> str:
    # Browsers send every cookie of the site in one header; past aiohttp's 8190-byte line limit the
    # request is refused before any handler runs.
    return f"session_id={token}; " + "; ".join(f"pref{n}={'v' * 90}" for n in range(100))


async def test_oversized_headers_get_a_4xx_and_the_node_keeps_serving(quiet_node: Node, sessions: SessionStore) -> None:
    token = (await sessions.create("big-cookie", 600)).token
    async with aiohttp.ClientSession() as http:
        for headers in ({"Cookie": _oversized_cookie(token)}, {"Authorization": "Bearer " + "x" * 10_000},
                        {f"X-Pad-{n}": "y" * 8000 for n in range(20)}):
            response = await http.get(f"{quiet_node.url}/api/notifications", headers=headers)
            assert 400 <= response.status < 500, response.status
        response = await http.get(f"{quiet_node.url}/api/notifications/unread-count", headers=_auth(token))
        assert response.status == 200
    assert quiet_node.process.popen.poll() is None


async def test_an_oversized_cookie_header_does_not_leak_the_session_token_into_the_log(
    quiet_node: Node, sessions: SessionStore
) -> None:
    token = (await sessions.create("big-cookie", 600)).token
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{quiet_node.url}/api/notifications", headers={"Cookie": _oversized_cookie(token)})
        assert response.status == 400
    # aiohttp logs the refused header line it read (LineTooLong quotes it): that line is the one to check.
    output = await log_after(quiet_node.process, 0, "Got more than 8190 bytes when reading: b'session_id=")
    assert token not in output


async def test_cookie_authenticated_mark_read_from_a_foreign_origin_is_refused(
    node: Node, sessions: SessionStore, redis_client: Redis
) -> None:
    token = (await sessions.create("csrf-victim", 600)).token
    await emit(redis_client, claim_event("csrf-target", "csrf-victim"))
    headers = {"Cookie": f"session_id={token}"}
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 10
        while (await (await http.get(f"{node.url}/api/notifications/unread-count", headers=headers)).json())["count"] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        response = await http.post(f"{node.url}/api/notifications/read-all",
                                   headers={**headers, "Origin": "https://evil.example"})
        assert response.status == 403
        count = await (await http.get(f"{node.url}/api/notifications/unread-count", headers=headers)).json()
        assert count["count"] == 1
