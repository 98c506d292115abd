"""Push jobs: the hop from a worker (or a node's REST handler) to the nodes holding the recipients.

One small interface — `enqueue(by_node)` and `consume(node_id)` — over a per-node Redis Stream
(`notify:push:<node_id>`), read with a blocking XREAD in batches. Not a second arq hop: arq costs about
nine Redis round trips per job and polls; a stream costs one XADD per node per event and wakes the
reader at once. Streams are trimmed (MAXLEN ~), expire with their node's presence, and entries older
than `push.job_expiry_s` are dropped unread (the notifications stay stored).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

import orjson
import redis.exceptions
from redis.asyncio import Redis

from notify_server.constants import PUSH_STREAM_PREFIX

logger = logging.getLogger("notify.push")

_FIELD = b"j"


@dataclasses.dataclass(frozen=True, slots=True)
class PushItem:
    """For one user on one node: a serialised notification frame and/or the new unread count."""

    user_id: str
    frame: str | None = None
    notification_id: str | None = None  # of `frame`, so a catch-up can drop what it replayed
    unread_count: int | None = None
    unread_version: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PushJob:
    items: list[PushItem]
    enqueued_at: float  # unix seconds, for the push-latency metric


class PushTransport(Protocol):
    async def enqueue(self, by_node: Mapping[str, Sequence[PushItem]]) -> None:
        """One push job per node, carrying that node's items."""

    def consume(self, node_id: str) -> AsyncIterator[list[PushJob]]:
        """This node's push jobs, in batches, as they arrive (runs until cancelled)."""


def stream_key(node_id: str) -> str:
    return PUSH_STREAM_PREFIX + node_id


def encode_job(items: Sequence[PushItem], now: float) -> bytes:
    return orjson.dumps({
        "t": now,
        "i": [[i.user_id, i.frame, i.notification_id, i.unread_count, i.unread_version] for i in items],
    })


def decode_job(payload: bytes) -> PushJob:
    data = orjson.loads(payload)
    return PushJob(items=[PushItem(*fields) for fields in data["i"]], enqueued_at=float(data["t"]))


class StreamPushTransport:
    def __init__(
        self,
        redis: Redis,
        *,
        maxlen: int,
        stream_ttl_s: int,
        job_expiry_s: float,
        read_batch: int = 256,
        read_block_ms: int = 1000,
        retry_max_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._stream_ttl_s = stream_ttl_s
        self._job_expiry_s = job_expiry_s
        self._read_batch = read_batch
        self._read_block_ms = read_block_ms
        self._retry_max_s = retry_max_s
        self.dropped_expired = 0

    async def enqueue(self, by_node: Mapping[str, Sequence[PushItem]]) -> None:
        if not by_node:
            return
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id, items in by_node.items():
                key = stream_key(node_id)
                pipe.xadd(key, {_FIELD: encode_job(items, now)}, maxlen=self._maxlen, approximate=True)
                pipe.expire(key, self._stream_ttl_s)
            await pipe.execute()

    async def touch(self, node_id: str) -> None:
        """Keep this node's stream alive as long as its presence (called by the presence refresher)."""
        await self._redis.expire(stream_key(node_id), self._stream_ttl_s)

    async def delete(self, node_id: str) -> None:
        await self._redis.delete(stream_key(node_id))

    async def consume(self, node_id: str) -> AsyncIterator[list[PushJob]]:
        key = stream_key(node_id)
        last_id = await self._last_id(key)
        delay_s = 0.1
        while True:
            try:
                response = await self._redis.xread({key: last_id}, count=self._read_batch, block=self._read_block_ms)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                # Redis restarting: keep trying; presence is rebuilt by its refresher.
                logger.warning("push stream read failed (%s); retrying in %.1fs", type(exc).__name__, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(self._retry_max_s, delay_s * 2)
                continue
            delay_s = 0.1
            if not response:
                continue
            jobs: list[PushJob] = []
            oldest_ms = (time.time() - self._job_expiry_s) * 1000
            for _stream, entries in response:
                for entry_id, fields in entries:
                    last_id = entry_id
                    if int(entry_id.split(b"-", 1)[0]) < oldest_ms:
                        self.dropped_expired += 1
                        continue
                    try:
                        jobs.append(decode_job(fields[_FIELD]))
                    except (KeyError, ValueError, TypeError):
                        logger.warning("dropping malformed push job %s", entry_id.decode())
            if jobs:
                yield jobs

    async def _last_id(self, key: str) -> bytes:
        """Start after what is already in the stream: a new consumer has no backlog to replay."""
        while True:
            try:
                newest = await self._redis.xrevrange(key, count=1)
                return newest[0][0] if newest else b"0-0"
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                logger.warning("push stream unreachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
