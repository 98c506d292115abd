"""`/sse/notifications`: the same notifications over Server-Sent Events, where WebSockets are blocked.

Corporate proxies and some mobile networks strip the WebSocket upgrade; a plain HTTP response that
never ends gets through. The stream carries the WebSocket's frames as SSE events:

    event: unread_count            event: notification             event: resync
    data: {"count": 5, ...}        id: <notification_id>           data: {}
                                   data: {the eight keys}

    event: notifications_updated   (issue 18: states changed, in any tab; only the changed flags)
    data: {"notification_ids": [...], "archived": true}

authenticated like the WebSocket (cookie `session_id`, `?token=`, every `auth.methods` method; 401 with
the JSON error shape otherwise, 403 for a foreign Origin), registered in the same connection map (so
it shares the per-connection send queue and its 4008 rule, `limits.max_connections_per_user`,
presence, expiry and revocation, metrics), with `Last-Event-ID` (what browsers send when they reconnect)
working as `?since=`. A comment line every `heartbeat.interval_s` keeps proxies from closing it; a
client that is gone fails a write and is dropped. A stream the server ends says why first:
`event: close` with `data: {"code": 4001}` (session over: do not reconnect with it) or 1001 (draining).
"""

from __future__ import annotations

import asyncio
import logging
import random

import orjson
from aiohttp import web

from notify_server.auth.origins import origin_allowed
from notify_server.web import appkeys
from notify_server.web.admission import Refusal, admit, registered
from notify_server.web.api import json_error

logger = logging.getLogger("notify.sse")

SSE_PATH = "/sse/notifications"
SSE = "sse"  # the transport's name in logs, metrics and the connect proxy's request
_FRAME_HEAD = b'{"type":"'
_DATA_KEY = b'","data":'
CLOSED_POLL_S = 1.0  # how often a stream checks that its client is still there between writes
RETRY_MIN_MS, RETRY_MAX_MS = 1000, 5000  # the jittered `retry:` an EventSource reconnects after


def encode_event(frame: str) -> bytes:
    """One SSE event from a serialised frame `{"type": T, "data": D}` (KEEPALIVE "" is a comment)."""
    if not frame:
        return b":\n\n"
    raw = frame.encode()
    split = raw.find(_DATA_KEY)
    if not raw.startswith(_FRAME_HEAD) or split < 0:
        parsed = orjson.loads(raw)
        event, data = str(parsed["type"]).encode(), orjson.dumps(parsed["data"])
    else:
        event, data = raw[len(_FRAME_HEAD) : split], raw[split + len(_DATA_KEY) : -1]
    if event == b"notification":
        notification_id = orjson.loads(data).get("notification_id")
        if isinstance(notification_id, str):
            return b"event: notification\nid: " + notification_id.encode() + b"\ndata: " + data + b"\n\n"
    return b"event: " + event + b"\ndata: " + data + b"\n\n"


class SseStream:
    """An SSE response as the connection manager sees a socket (connections.WebSocketLike)."""

    __slots__ = ("_response", "_transport", "_ended", "close_code")

    def __init__(self, response: web.StreamResponse, transport: asyncio.BaseTransport | None) -> None:
        self._response = response
        self._transport = transport
        self._ended = asyncio.Event()
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        return self._ended.is_set() or self._transport is None or self._transport.is_closing()

    async def send_str(self, data: str) -> None:
        await self._response.write(encode_event(data))

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """Say why (`event: close`), then end the stream."""
        if self._ended.is_set():
            return False
        self.close_code = code
        try:
            if self._transport is not None and not self._transport.is_closing():
                await self._response.write(b"event: close\ndata: " + orjson.dumps({"code": code}) + b"\n\n")
                await self._response.write_eof()
        finally:
            self._ended.set()
        return True

    async def wait_closed(self) -> None:
        """Until the server ends the stream or the client goes away."""
        while not self._ended.is_set():
            if self._transport is None or self._transport.is_closing():
                self._ended.set()
                return
            try:
                await asyncio.wait_for(self._ended.wait(), CLOSED_POLL_S)
            except TimeoutError:
                continue


async def notifications_sse(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[appkeys.SETTINGS]
    if not origin_allowed(request.headers.get("Origin"), settings.websocket.allowed_origins):
        return json_error(403, "forbidden", "origin not allowed")
    admitted = await admit(request, SSE)
    if isinstance(admitted, Refusal):
        return admitted.response()

    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    })
    await response.prepare(request)
    # EventSource reconnects by itself after this many ms: jittered, so that the clients of a node that
    # went away do not all come back in the same instant.
    await response.write(b"retry: %d\n\n" % random.randint(RETRY_MIN_MS, RETRY_MAX_MS))
    stream = SseStream(response, request.transport)
    since = request.headers.get("Last-Event-ID")
    async with registered(request, admitted, stream, since=since, streaming=True) as registration:
        if registration.open:
            await stream.wait_closed()
    return response
