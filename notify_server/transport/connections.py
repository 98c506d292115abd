"""The node's connection map: which sockets this node holds for which user, and sending to them.

The manager owns the map (the `dict[str, set[WebSocket]]` of SPEC §7), each socket's state, its expiry
timer and its outbox; delivery, the heartbeat and the session watcher call its methods and never reach
into them. `register_connection` / `remove_connection` / `push_to_user` / `push_unread_count` are what production
runs: the push consumer (transport/delivery.py) calls the last two for every frame and count it reads.

Each socket has a bounded outbox: a push
appends the (already serialised) frame and returns at once; a short-lived writer task drains the outbox,
so one slow or dead socket never stalls the push loop or another user's socket. An outbox that overflows
(`limits.send_queue_max`) closes its socket with 4008. Idle sockets have no outbox and no task.

Unread counts are coalesced: an outbox keeps at most one pending count (the newest by version), sent
after the frames queued before it, and a socket is never sent a count older than one it already got.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

import orjson

from notify_server.core.constants import CLOSE_HEARTBEAT_TIMEOUT, CLOSE_TOO_SLOW
from notify_server.core.identity import SESSION, Identity
from notify_server.storage.notifications import UnreadState
from notify_server.transport.frames import unread_count_frame

logger = logging.getLogger("notify.connections")


class WebSocketLike(Protocol):
    """What the manager needs of a socket (aiohttp's WebSocketResponse; fakes in unit tests)."""

    @property
    def closed(self) -> bool: ...

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> Any: ...


UnreadReader = Callable[[str], Awaitable["UnreadState | int"]]
PresenceHook = Callable[[str], Awaitable[None]]

PING_FRAME = b"\x89\x00"  # an empty server ping (FIN, opcode 9, unmasked): written as is, never waits
PING_SLICE = 500  # sockets pinged between two yields to the event loop
KEEPALIVE = ""  # what a streaming connection is sent instead of a ping (an SSE comment line)


@dataclasses.dataclass(eq=False, slots=True)
class ConnectionState:
    """What the node knows of one socket beyond the map."""

    user_id: str
    session_hash: str = ""  # the session's sha256, for sockets authenticated by the sessions table
    identity: Identity | None = None  # who, by which auth method, and what re-checking needs (identity.py)
    opened_at: float = dataclasses.field(default_factory=time.monotonic)
    last_ping_at: float = 0.0
    last_pong_at: float = 0.0
    expires_at: float = 0.0  # loop time at which on_expiry runs (0: none); see set_expiry
    on_expiry: Callable[[WebSocketLike], None] | None = None
    closing: bool = False  # a close was started: nothing more is queued for it
    close_code: int | None = None  # the code this node closed it with (the metric's label)
    transport: Any = None  # the socket's asyncio transport, to abort a stale one
    # A one-way stream (Server-Sent Events, notify_server.web.sse): no pings and no pongs; the heartbeat
    # queues a KEEPALIVE through its outbox, and a client that is gone fails that write.
    streaming: bool = False
    unread_version: int = -1  # newest unread-count version queued for this socket
    # Notifications a catch-up replayed: a push of one of them can still be on its way (committed
    # before the catch-up query, pushed after it), so it is dropped until `replayed_until`.
    replayed: frozenset[str] = frozenset()
    replayed_until: float = 0.0


class _Outbox:
    __slots__ = ("frames", "held", "unread", "unread_version", "writer")

    def __init__(self, held: bool) -> None:
        self.frames: collections.deque[tuple[str, str | None]] = collections.deque()  # (text, notification id)
        self.held = held  # nothing is written until `release` puts the first frames in front
        self.unread: str | None = None  # the newest unread_count frame not yet written
        self.unread_version = -1
        self.writer: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.frames) + (self.unread is not None)


class NotificationWebSocketManager:
    """The per-node connection map and the ways to send to it."""

    def __init__(
        self,
        unread_state: UnreadReader | None = None,
        *,
        send_queue_max: int = 256,
        close_timeout_s: float = 3.0,
        on_first_connection: PresenceHook | None = None,
        on_last_connection: PresenceHook | None = None,
        on_frames_sent: Callable[[int], None] | None = None,
    ) -> None:
        self._connections: dict[str, set[WebSocketLike]] = {}
        self._states: dict[WebSocketLike, ConnectionState] = {}
        self._unread_state = unread_state
        self._send_queue_max = send_queue_max
        self._close_timeout_s = close_timeout_s
        self._on_first_connection = on_first_connection
        self._on_last_connection = on_last_connection
        self.on_frames_sent = on_frames_sent
        self._outboxes: dict[WebSocketLike, _Outbox] = {}
        self._expiries: list[tuple[float, int, WebSocketLike]] = []  # heap of (deadline, seq, socket)
        self._expiry_seq = 0
        self._stale_expiries = 0  # heap entries of sockets gone or re-armed
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- the map

    async def register_connection(
        self, user_id: str, ws: WebSocketLike, *, session_hash: str = "", hold: bool = False, transport: Any = None,
        identity: Identity | None = None, streaming: bool = False,
    ) -> ConnectionState:
        """Add a socket to the user's set. With hold=True, frames pushed to it wait for `release`.
        `transport` (the socket's asyncio transport) lets the heartbeat ping without waiting and abort a
        stale peer. `identity`: how it authenticated (None: by the session `session_hash`)."""
        sockets = self._connections.get(user_id)
        first = sockets is None
        if sockets is None:
            sockets = self._connections[user_id] = set()
        sockets.add(ws)
        state = self._states[ws] = ConnectionState(
            user_id=user_id, session_hash=session_hash, transport=transport, identity=identity, streaming=streaming
        )
        if hold:
            self._outboxes[ws] = _Outbox(held=True)
        if first and self._on_first_connection is not None:
            # Shielded: a handler cancelled now (client gone, shutdown) must still leave presence right.
            await asyncio.shield(self._on_first_connection(user_id))
        return state

    async def remove_connection(self, user_id: str, ws: WebSocketLike) -> None:
        """Drop one socket; drop the user's entry when it was the last one. Safe to call twice."""
        state = self._states.pop(ws, None)
        if state is not None and state.expires_at:
            self._stale_expiries += 1
            self._compact_expiries()
        outbox = self._outboxes.pop(ws, None)
        if outbox is not None and outbox.writer is not None and outbox.writer is not asyncio.current_task():
            outbox.writer.cancel()
        sockets = self._connections.get(user_id)
        if sockets is None or ws not in sockets:
            return
        sockets.discard(ws)
        if not sockets:
            del self._connections[user_id]
            if self._on_last_connection is not None:
                await asyncio.shield(self._on_last_connection(user_id))

    def count(self, user_id: str) -> int:
        return len(self._connections.get(user_id, ()))

    @property
    def connection_count(self) -> int:
        return len(self._states)

    @property
    def connections(self) -> dict[str, set[WebSocketLike]]:
        """A copy of the map, for looking at (tests, debugging); changing it changes nothing."""
        return {user_id: set(sockets) for user_id, sockets in self._connections.items()}

    def state_of(self, ws: WebSocketLike) -> ConnectionState | None:
        return self._states.get(ws)

    def user_ids(self) -> list[str]:
        return list(self._connections)

    # ---------------------------------------------------------------- pushing to users

    async def push_to_user(
        self, user_id: str, payload: dict[str, Any] | str, notification_id: str | None = None
    ) -> int:
        """Send one frame to every socket of this user on this node; returns how many got it queued.
        The payload is serialised once, whatever the number of sockets. No socket here: a no-op."""
        return self._push_frame(user_id, payload if isinstance(payload, str) else orjson.dumps(payload).decode(),
                                notification_id)

    async def push_unread_count(self, user_id: str, unread: UnreadState | int | None = None) -> int:
        """Send the user's unread count (read from the store unless given) to every socket here."""
        if user_id not in self._connections:
            return 0
        if unread is None:
            if self._unread_state is None:
                raise RuntimeError("this manager was built without an unread-count reader")
            unread = await self._unread_state(user_id)
        if isinstance(unread, int):
            return self._push_unread(user_id, unread_count_frame(unread), None)
        return self._push_unread(user_id, unread_count_frame(unread.count, unread.version, unread.unseen),
                                 unread.version)

    def _push_frame(self, user_id: str, text: str, notification_id: str | None) -> int:
        return self._each_socket(user_id, lambda ws: self._send(ws, text, notification_id))

    def _push_unread(self, user_id: str, text: str, version: int | None) -> int:
        return self._each_socket(user_id, lambda ws: self._send_unread(ws, text, version))

    def _each_socket(self, user_id: str, send: Callable[[WebSocketLike], None]) -> int:
        sockets = self._connections.get(user_id)
        if not sockets:
            return 0
        for ws in list(sockets):
            send(ws)
        return len(sockets)

    # ---------------------------------------------------------------- one socket

    def _send(self, ws: WebSocketLike, text: str, notification_id: str | None = None) -> None:
        """Queue one frame for one socket; close it with 4008 when its outbox is full."""
        outbox = self._outbox(ws)
        if outbox is None:
            return
        if notification_id is not None and self._was_replayed(ws, notification_id):
            return
        if len(outbox) >= self._send_queue_max:
            self._overflow(ws)
            return
        outbox.frames.append((text, notification_id))
        self._start_writer(ws, outbox)

    def _send_unread(self, ws: WebSocketLike, text: str, version: int | None) -> None:
        """Queue an unread_count frame, replacing one still waiting; older versions are dropped."""
        state = self._states.get(ws)
        outbox = self._outbox(ws)
        if outbox is None or state is None:
            return
        if version is not None:
            if version <= state.unread_version:
                return
            state.unread_version = version
        if outbox.unread is None and len(outbox) >= self._send_queue_max:
            self._overflow(ws)
            return
        outbox.unread = text
        self._start_writer(ws, outbox)

    def release(
        self, ws: WebSocketLike, first_frames: Sequence[str], *, unread_version: int | None = None,
        already_sent: Collection[str] = (), already_sent_ttl_s: float = 30.0,
    ) -> None:
        """Write `first_frames` before anything pushed while the socket was held, then stop holding.
        Notification frames whose id is in `already_sent` (replayed in first_frames) are dropped, held
        or arriving within `already_sent_ttl_s`; so is a held unread count not newer than
        `unread_version`."""
        outbox = self._outboxes.get(ws)
        state = self._states.get(ws)
        if outbox is None or state is None:
            return
        if already_sent:
            outbox.frames = collections.deque(f for f in outbox.frames if f[1] not in already_sent)
            state.replayed = frozenset(already_sent)
            state.replayed_until = time.monotonic() + already_sent_ttl_s
        if unread_version is not None:
            if state.unread_version <= unread_version:
                outbox.unread = None
            state.unread_version = max(state.unread_version, unread_version)
        outbox.frames.extendleft((text, None) for text in reversed(first_frames))
        outbox.held = False
        self._start_writer(ws, outbox)

    def _was_replayed(self, ws: WebSocketLike, notification_id: str) -> bool:
        state = self._states[ws]
        if not state.replayed:
            return False
        if time.monotonic() > state.replayed_until:
            state.replayed = frozenset()
            return False
        return notification_id in state.replayed

    def _outbox(self, ws: WebSocketLike) -> _Outbox | None:
        state = self._states.get(ws)
        if state is None or state.closing:
            return None
        outbox = self._outboxes.get(ws)
        if outbox is None:
            outbox = self._outboxes[ws] = _Outbox(held=False)
        return outbox

    def _start_writer(self, ws: WebSocketLike, outbox: _Outbox) -> None:
        if not outbox.held and outbox.writer is None and len(outbox):
            outbox.writer = asyncio.get_running_loop().create_task(self._drain(ws, outbox))

    async def _drain(self, ws: WebSocketLike, outbox: _Outbox) -> None:
        sent = 0
        try:
            while len(outbox):
                if ws.closed:
                    break
                if outbox.frames:
                    text = outbox.frames.popleft()[0]
                elif outbox.unread is not None:
                    text, outbox.unread = outbox.unread, None
                else:
                    break
                await ws.send_str(text)
                sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead socket: its handler sees the close and removes it
            logger.debug("send failed, dropping socket: %s", type(exc).__name__)
            outbox.frames.clear()
            outbox.unread = None
        finally:
            outbox.writer = None
            if self.on_frames_sent is not None and sent:
                self.on_frames_sent(sent)
            if not len(outbox) and self._outboxes.get(ws) is outbox:
                del self._outboxes[ws]  # idle sockets keep no outbox

    def _overflow(self, ws: WebSocketLike) -> None:
        logger.warning("send queue full (%d frames), closing with %d", self._send_queue_max, CLOSE_TOO_SLOW)
        outbox = self._outboxes.pop(ws, None)
        if outbox is not None:
            outbox.frames.clear()
            outbox.unread = None
            if outbox.writer is not None:
                outbox.writer.cancel()
        self.close_soon(ws, CLOSE_TOO_SLOW, b"send queue overflow")

    # ---------------------------------------------------------------- closing

    def close_soon(self, ws: WebSocketLike, code: int, message: bytes = b"") -> None:
        """Close a socket without waiting for it (the caller may be a push loop). The handler removes
        it from the map when its read loop ends."""
        state = self._states.get(ws)
        if state is not None:
            if state.closing:
                return
            state.closing = True
            state.close_code = code
        task = asyncio.get_running_loop().create_task(self._close(ws, code, message))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, ws: WebSocketLike, code: int, message: bytes) -> None:
        # A client that stopped reading would block the close frame's write forever; aiohttp closes
        # the transport when its close is cancelled by this timeout.
        try:
            await asyncio.wait_for(ws.close(code=code, message=message), self._close_timeout_s)
        except (TimeoutError, Exception) as exc:
            logger.debug("close failed: %s", type(exc).__name__)

    async def close_all(self, code: int, message: bytes = b"") -> None:
        """Close every socket (drain / shutdown) and wait for the closes to be sent."""
        for state in self._states.values():
            state.closing = True
            state.close_code = code
        await asyncio.gather(*(self._close(ws, code, message) for ws in list(self._states)))

    async def wait_closing(self) -> None:
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    # ---------------------------------------------------------------- heartbeat

    def record_pong(self, ws: WebSocketLike) -> None:
        state = self._states.get(ws)
        if state is not None:
            state.last_pong_at = time.monotonic()

    async def ping_all(self, timeout_s: float) -> list[WebSocketLike]:
        """Ping every socket; returns those pinged. A real socket's ping is written straight to its
        transport, so a full send buffer never delays it (a dead peer behind one is still found by its
        missing pong); sockets without a transport (fakes) are pinged through `ping()`."""
        pinged = []
        for index, (ws, state) in enumerate(list(self._states.items())):
            if state.closing:
                continue
            state.last_ping_at = time.monotonic()
            if state.streaming:
                self._send(ws, KEEPALIVE)  # behind the frames queued; a full outbox closes it (4008)
                continue
            pinged.append(ws)
            transport = state.transport
            if transport is not None:
                if not transport.is_closing():
                    transport.write(PING_FRAME)
            else:
                await self._ping_via_socket(ws, timeout_s)
            if index % PING_SLICE == PING_SLICE - 1:
                await asyncio.sleep(0)
        return pinged

    @staticmethod
    async def _ping_via_socket(ws: WebSocketLike, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await ws.ping()  # type: ignore[attr-defined]
        except Exception:
            pass  # unanswered is unanswered: drop_unanswered judges it

    async def drop_unanswered(self, pinged: Sequence[WebSocketLike]) -> int:
        """Drop the sockets that sent no pong since their ping: a stale peer will not answer a close
        handshake, so its transport is aborted and it leaves the map now. Returns how many."""
        dropped = 0
        for ws in pinged:
            state = self._states.get(ws)
            if state is None or state.last_pong_at >= state.last_ping_at:
                continue
            dropped += 1
            state.close_code = CLOSE_HEARTBEAT_TIMEOUT
            if state.transport is not None:
                state.transport.abort()
            else:
                self.close_soon(ws, CLOSE_HEARTBEAT_TIMEOUT, b"heartbeat timeout")
            await self.remove_connection(state.user_id, ws)
        return dropped

    # ---------------------------------------------------------------- sessions

    def sockets_by_session(self, sockets: Iterable[WebSocketLike] | None = None) -> dict[str, list[WebSocketLike]]:
        """{session hash: its open sockets}, of these sockets (default: all) that the sessions table vouches for."""
        by_hash: dict[str, list[WebSocketLike]] = {}
        for ws in list(self._states) if sockets is None else sockets:
            state = self._states.get(ws)
            if state is not None and not state.closing and (state.identity is None or state.identity.method == SESSION):
                by_hash.setdefault(state.session_hash, []).append(ws)
        return by_hash

    def sockets_by_credential(
        self, sockets: Iterable[WebSocketLike] | None = None
    ) -> dict[Identity, list[WebSocketLike]]:
        """{identity: its open sockets}, of these sockets (default: all) authenticated by another method
        than the sessions table (jwt, proxy): tabs sharing a credential share one identity key."""
        by_identity: dict[Identity, list[WebSocketLike]] = {}
        for ws in list(self._states) if sockets is None else sockets:
            state = self._states.get(ws)
            identity = state.identity if state is not None and not state.closing else None
            if identity is not None and identity.method != SESSION:
                by_identity.setdefault(identity, []).append(ws)
        return by_identity

    def set_identity(self, ws: WebSocketLike, identity: Identity) -> bool:
        """Put a socket on a new credential of its own user (an in-band refresh); its expiry timer is
        cancelled for the caller to set anew. False when the socket is gone, closing or another user's."""
        state = self._states.get(ws)
        if state is None or state.closing or identity.user_id != state.user_id:
            return False
        state.identity = identity
        state.session_hash = identity.session_hash
        self._cancel_expiry(state)
        return True

    def send_to(self, ws: WebSocketLike, text: str) -> None:
        """Queue one frame for this one socket (an answer to its own client), behind what is queued."""
        self._send(ws, text)

    def sockets_of_session(self, session_hash: str) -> list[WebSocketLike]:
        return [ws for ws, state in list(self._states.items()) if state.session_hash == session_hash]

    def set_expiry(self, ws: WebSocketLike, delay_s: float, on_expiry: Callable[[WebSocketLike], None]) -> None:
        """Call on_expiry(ws) in delay_s (replacing an earlier expiry); forgotten when the socket goes.

        One timer for the whole node, over a heap of deadlines: an asyncio TimerHandle per socket cost
        ~530 bytes of every idle socket (tracemalloc, bench/memory_probe.py); a heap entry ~70."""
        state = self._states.get(ws)
        if state is None:
            return
        loop = asyncio.get_running_loop()
        self._cancel_expiry(state)
        self._compact_expiries()
        state.expires_at = loop.time() + max(0.0, delay_s)
        state.on_expiry = on_expiry
        self._expiry_seq += 1
        heapq.heappush(self._expiries, (state.expires_at, self._expiry_seq, ws))
        if self._expiry_timer is None or self._expiry_timer.when() > state.expires_at:
            if self._expiry_timer is not None:
                self._expiry_timer.cancel()
            self._expiry_timer = loop.call_at(state.expires_at, self._run_expiries)

    def _cancel_expiry(self, state: ConnectionState) -> None:
        if state.expires_at:
            state.expires_at = 0.0
            self._stale_expiries += 1

    def _run_expiries(self) -> None:
        self._expiry_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._expiries and self._expiries[0][0] <= now:
            deadline, _, ws = heapq.heappop(self._expiries)
            state = self._states.get(ws)
            if state is None or state.expires_at != deadline or state.on_expiry is None:
                self._stale_expiries = max(0, self._stale_expiries - 1)
                continue  # the socket went, or its expiry moved
            state.expires_at = 0.0
            state.on_expiry(ws)
        if self._expiries:
            self._expiry_timer = loop.call_at(self._expiries[0][0], self._run_expiries)

    def _compact_expiries(self) -> None:
        """Drop heap entries of sockets gone or re-armed once they are half the heap (they hold sockets)."""
        if self._stale_expiries * 2 <= len(self._expiries):
            return
        self._expiries = [
            entry for entry in self._expiries
            if (state := self._states.get(entry[2])) is not None and state.expires_at == entry[0]
        ]
        heapq.heapify(self._expiries)
        self._stale_expiries = 0
