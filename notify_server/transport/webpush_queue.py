"""The Web Push queue: stored notifications waiting to be sent to browsers, a Redis stream shared by workers.

Why a stream, and not sending from the pipeline: a push service may be slow or down, and sending takes
a request per subscription; the pipeline only appends (one XADD per 500 recipients of an event, in the
round trip after the WebSocket push) and goes on with the next batch. Every worker reads the stream in
the consumer group `senders` (workers/consumer.py starts notify_server.transport.webpush_sender), so
each entry is sent by one worker, and an entry a worker took and did not finish (it died) stays pending
and is claimed by another after CLAIM_IDLE_MS. The stream is trimmed to `web_push.queue_maxlen` entries
(approximate MAXLEN): a backlog that large is older than anyone wants a push for.

This module owns the stream's layout: the key, the group, the entry format, claim and acknowledge.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.exceptions
from redis.asyncio import Redis

from notify_server.core.constants import REDIS_PREFIX
from notify_server.storage.notifications import Notification
from notify_server.transport.frames import notification_data

logger = logging.getLogger("notify.webpush")

STREAM_KEY = REDIS_PREFIX + "webpush"
GROUP = "senders"
RECIPIENTS_PER_ENTRY = 500  # a 10,000-recipient event is 20 entries, shared by the workers
CLAIM_IDLE_MS = 60_000  # an entry pending this long on a silent consumer is taken over
_FIELD = b"j"


@dataclasses.dataclass(frozen=True, slots=True)
class PushBatch:
    """Recipients of one event, to push: the frame's shared data and (user id, notification id) pairs."""

    entry_id: bytes
    event_type: str
    priority: str
    data: dict[str, Any]  # the frame's eight keys; notification_id is each recipient's own
    recipients: list[tuple[str, str]]

    @property
    def enqueued_at(self) -> float:
        """Unix seconds: the stream id's time."""
        return int(self.entry_id.split(b"-", 1)[0]) / 1000


def encode_entries(notifications: Sequence[Notification]) -> list[bytes]:
    """The entries for these rows: one per RECIPIENTS_PER_ENTRY recipients of each event."""
    by_event: dict[tuple[str, object], list[Notification]] = {}
    for n in notifications:
        by_event.setdefault((n.event_id, n.created_at), []).append(n)
    entries = []
    for rows in by_event.values():
        first = rows[0]
        data = notification_data(first)
        for start in range(0, len(rows), RECIPIENTS_PER_ENTRY):
            chunk = rows[start : start + RECIPIENTS_PER_ENTRY]
            entries.append(orjson.dumps({
                "e": first.event_type, "p": first.priority, "d": data,
                "r": [[n.recipient_id, n.notification_id] for n in chunk],
            }))
    return entries


def decode_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> PushBatch:
    """ValueError (or KeyError, TypeError) when the entry is not one encode_entries wrote."""
    raw = orjson.loads(fields[_FIELD])
    recipients = [(str(user_id), str(notification_id)) for user_id, notification_id in raw["r"]]
    if not isinstance(raw["d"], dict):
        raise ValueError("data is not an object")
    return PushBatch(entry_id, str(raw["e"]), str(raw["p"]), raw["d"], recipients)


class WebPushQueue:
    def __init__(self, redis: Redis, *, maxlen: int) -> None:
        self._redis = redis
        self._maxlen = maxlen

    async def enqueue(self, notifications: Sequence[Notification]) -> int:
        """Append these stored rows (one round trip); returns entries written."""
        entries = encode_entries(notifications)
        if not entries:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for payload in entries:
                pipe.xadd(STREAM_KEY, {_FIELD: payload}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()
        return len(entries)

    async def ensure_group(self) -> None:
        """Create the consumer group (from the stream's start: entries written before any worker read
        them are sent too); a group that exists is kept."""
        try:
            await self._redis.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[PushBatch]:
        """New entries for this consumer (waiting up to block_ms). After a Redis restart that lost the
        group, it is created again."""
        try:
            response = await self._redis.xreadgroup(GROUP, consumer, {STREAM_KEY: ">"}, count=count, block=block_ms)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return await self._decoded([entry for _stream, entries in response or () for entry in entries])

    async def claim_stale(self, consumer: str, count: int) -> list[PushBatch]:
        """Entries another consumer took and has not acknowledged for CLAIM_IDLE_MS (it died), now ours."""
        try:
            reply = await self._redis.xautoclaim(STREAM_KEY, GROUP, consumer, CLAIM_IDLE_MS, "0-0", count=count)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        return await self._decoded([entry for entry in reply[1] if entry and entry[1]])

    async def keep_claimed(self, consumer: str, entry_ids: Sequence[bytes]) -> None:
        """Tell the group these entries are still being worked on (a slow push service, a long
        Retry-After), so no one takes them over."""
        if entry_ids:
            await self._redis.xclaim(STREAM_KEY, GROUP, consumer, 0, list(entry_ids), justid=True)

    async def ack(self, entry_ids: Sequence[bytes]) -> None:
        """Done with these entries: acknowledged and deleted."""
        if not entry_ids:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(STREAM_KEY, GROUP, *entry_ids)
            pipe.xdel(STREAM_KEY, *entry_ids)
            await pipe.execute()

    async def depth(self) -> int:
        """Entries in the stream (read or not, until acknowledged)."""
        return int(await self._redis.xlen(STREAM_KEY))

    async def _decoded(self, entries: list[Any]) -> list[PushBatch]:
        batches, malformed = [], []
        for entry_id, fields in entries:
            try:
                batches.append(decode_entry(entry_id, fields))
            except (KeyError, ValueError, TypeError):
                malformed.append(entry_id)
        if malformed:
            logger.warning("dropping %d malformed web push entr(ies), first %s", len(malformed), malformed[0].decode())
            await self.ack(malformed)
        return batches


def age_s(batch: PushBatch, now: float | None = None) -> float:
    return (time.time() if now is None else now) - batch.enqueued_at
