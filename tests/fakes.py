"""What the delivery tests share: a fake socket for the connection manager's unit tests, and the
client side of the real thing (a node under pytest-aiohttp, a WebSocket tab, frames and close codes).

Only `FakeSocket` is a test double; everything else talks to a real node over a real socket, backed by
the real Postgres and Redis of the test run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from notify_server.core.settings import Settings
from notify_server.web.app import create_app

WS_PATH = "/ws/notifications"
FRAME_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------- the connection manager's fake socket


class FakeSocket:
    """Records what the manager sends; can fail every send, or block every send until `unblock()`."""

    def __init__(self, name: str = "ws", *, fail: bool = False, block: bool = False) -> None:
        self.name = name
        self.sent: list[str] = []
        self.closed = False
        self.close_code: int | None = None
        self.close_message: bytes | None = None
        self.send_attempts = 0
        self._fail = fail
        self._block = block
        self._unblocked = asyncio.Event()

    def __repr__(self) -> str:
        return f"FakeSocket({self.name!r})"

    async def send_str(self, data: str) -> None:
        self.send_attempts += 1
        if self._fail:
            raise ConnectionResetError("peer went away")
        if self._block:
            await self._unblocked.wait()
        self.sent.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        self.close_code = code
        self.close_message = message
        return True

    def unblock(self) -> None:
        self._block = False
        self._unblocked.set()

    def frames(self) -> list[dict[str, Any]]:
        return [orjson.loads(text) for text in self.sent]


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0, what: str = "condition") -> None:
    """Yield to the loop until `predicate()` holds (writer tasks, close tasks, server handlers)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float = 2.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- a real node and its tabs


AiohttpClient = Callable[..., Awaitable[TestClient]]


async def revocation_subscribers(redis: Redis) -> list[int]:
    """Ids of the Redis clients of this test's db that are subscribed to something (the nodes' session
    watchers listening for revocations)."""
    db = int(redis.connection_pool.connection_kwargs.get("db", 0))
    return [int(c["id"]) for c in await redis.client_list() if int(c.get("db", -1)) == db and int(c.get("sub", 0)) > 0]


async def start_node(aiohttp_client: AiohttpClient, settings: Settings, node_id: str = "n1") -> TestClient:
    """One server node on a real socket, built exactly as `serve` builds it.

    Returns once the node listens for revocations: one published before that would not be heard
    (pub/sub keeps nothing), and the tests publish right after connecting.
    """
    probe = Redis.from_url(settings.redis.url)
    try:
        before = len(await revocation_subscribers(probe))
        client = await aiohttp_client(create_app(settings, node_id=node_id))

        async def subscribed() -> bool:
            return len(await revocation_subscribers(probe)) > before

        await wait_until_async(subscribed, what=f"node {node_id} to subscribe to revocations")
    finally:
        await probe.aclose()
    return client


async def open_tab(
    client: TestClient, token: str | None, *, via: str = "cookie", **kwargs: Any
) -> ClientWebSocketResponse:
    """A browser tab: the token in the `session_id` cookie (default) or in the `token` query parameter."""
    if token is not None and via == "cookie":
        headers = {"Cookie": "session_id=" + token, **kwargs.pop("headers", {})}
        return await client.ws_connect(WS_PATH, headers=headers, **kwargs)
    if token is not None and via == "query":
        return await client.ws_connect(WS_PATH, params={"token": token}, **kwargs)
    return await client.ws_connect(WS_PATH, **kwargs)


async def receive_frame(ws: ClientWebSocketResponse, timeout_s: float = FRAME_TIMEOUT_S) -> dict[str, Any]:
    """The next server frame, parsed; fails on anything but a JSON text frame."""
    message = await ws.receive(timeout=timeout_s)
    assert message.type is WSMsgType.TEXT, f"expected a text frame, got {message.type!r} {message.data!r}"
    return orjson.loads(message.data)


async def receive_unread_count(ws: ClientWebSocketResponse, timeout_s: float = FRAME_TIMEOUT_S) -> int:
    """The next frame, which must be an unread_count frame; its count (other data keys, such as a
    version, are the server's business)."""
    frame = await receive_frame(ws, timeout_s)
    assert frame["type"] == "unread_count", frame
    return frame["data"]["count"]


async def receive_raw(ws: ClientWebSocketResponse, timeout_s: float = FRAME_TIMEOUT_S) -> str:
    message = await ws.receive(timeout=timeout_s)
    assert message.type is WSMsgType.TEXT, f"expected a text frame, got {message.type!r} {message.data!r}"
    return message.data


async def connect_and_count(client: TestClient, token: str, **kwargs: Any) -> tuple[ClientWebSocketResponse, int]:
    """Open a tab and read its first frame, which must be the unread count."""
    ws = await open_tab(client, token, **kwargs)
    frame = await receive_frame(ws)
    assert frame["type"] == "unread_count", frame
    return ws, frame["data"]["count"]


async def assert_nothing_arrives(ws: ClientWebSocketResponse, timeout_s: float = 0.5) -> None:
    try:
        message = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        return
    raise AssertionError(f"expected nothing, got {message.type!r} {message.data!r}")


async def expect_close(ws: ClientWebSocketResponse, code: int, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Read (skipping data frames) until the server closes the socket; check the code it sent.

    The code is the one in the server's Close frame, as a browser reports it. aiohttp's client records
    1006 instead when the server drops TCP before the client's Close reply, which aiohttp's server does
    when `close()` comes from another task (revocation, expiry, 4008) while the handler is reading."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"socket not closed within {timeout_s}s (expected {code})")
        try:
            message = await ws.receive(timeout=remaining)
        except TimeoutError:
            raise AssertionError(f"socket not closed within {timeout_s}s (expected {code})") from None
        if message.type is WSMsgType.CLOSE:
            assert message.data == code, f"server closed with {message.data} {message.extra!r}, expected {code}"
            return
        if message.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            assert ws.close_code == code, f"closed with {ws.close_code} ({message!r}), expected {code}"
            return


async def expect_dropped(ws: ClientWebSocketResponse, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Read (skipping data frames and pings) until the connection ends, whatever the way."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout_s}s")
        try:
            message = await ws.receive(timeout=remaining)
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout_s}s") from None
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


def claim_rejected(event_id: str, *recipients: dict[str, Any] | str, **overrides: Any) -> dict[str, Any]:
    """A CLAIM_REJECTED event (a template of config.yaml) for these recipients."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "event_type": "CLAIM_REJECTED",
        "recipients": [r if isinstance(r, dict) else {"user_id": r} for r in recipients],
        "data": {"provider_name": "Dr. Smith", "claim_id": "abc123"},
    }
    event.update(overrides)
    return event
