"""Push jobs: the hop from a worker (or a node's REST handler) to the nodes holding the recipients.

One small interface — `enqueue(by_node)` and `read(node_id, after)` — over a per-node Redis Stream
(`notify:push:<node_id>`), read with a blocking XREAD in batches. Not a second arq hop: arq costs about
nine Redis round trips per job and polls; a stream costs one XADD per node per event and wakes the
reader at once. Streams are trimmed (MAXLEN ~), expire with their node's presence, and entries older
than `push.job_expiry_s` are dropped unread (the notifications stay stored).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import orjson
from redis.asyncio import Redis

from notify_server.core.constants import PUSH_STREAM_PREFIX

logger = logging.getLogger("notify.push")

_FIELD = b"j"


@dataclasses.dataclass(frozen=True, slots=True)
class PushItem:
    """For one user on one node: a serialised frame (a notification, or any other frame for the user's
    tabs) and/or the new unread count. Fields are only ever added at the end: a job written by a node or
    worker of the previous release still decodes."""

    user_id: str
    frame: str | None = None
    notification_id: str | None = None  # of a notification `frame`, so a catch-up can drop what it replayed
    unread_count: int | None = None
    unread_version: int | None = None
    unseen_count: int | None = None  # beside unread_count (issue 18)


@dataclasses.dataclass(frozen=True, slots=True)
class PushJob:
    items: list[PushItem]
    enqueued_at: float  # unix seconds, for the push-latency metric


class PushTransport(Protocol):
    async def enqueue(self, by_node: Mapping[str, Sequence[PushItem]]) -> None:
        """One push job per node, carrying that node's items."""

    async def newest_id(self, node_id: str) -> bytes:
        """Where a new reader of this node's jobs starts: after what is there now."""

    async def read(self, node_id: str, after: bytes) -> tuple[bytes, list[PushJob]]:
        """The jobs after `after` (waiting up to the read block time): (the new position, jobs)."""


def stream_key(node_id: str) -> str:
    return PUSH_STREAM_PREFIX + node_id


def encode_job(items: Sequence[PushItem], now: float) -> bytes:
    return orjson.dumps({
        "t": now,
        "i": [[i.user_id, i.frame, i.notification_id, i.unread_count, i.unread_version, i.unseen_count]
              for i in items],
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
    ) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._stream_ttl_s = stream_ttl_s
        self._job_expiry_s = job_expiry_s
        self._read_batch = read_batch
        self._read_block_ms = read_block_ms
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

    async def newest_id(self, node_id: str) -> bytes:
        """Start after what is already in the stream: a new consumer has no backlog to replay."""
        newest = await self._redis.xrevrange(stream_key(node_id), count=1)
        return newest[0][0] if newest else b"0-0"

    async def read(self, node_id: str, after: bytes) -> tuple[bytes, list[PushJob]]:
        """One blocking XREAD. Entries older than job_expiry_s are skipped (counted in dropped_expired)."""
        response = await self._redis.xread({stream_key(node_id): after}, count=self._read_batch,
                                           block=self._read_block_ms)
        last_id = after
        jobs: list[PushJob] = []
        oldest_ms = (time.time() - self._job_expiry_s) * 1000
        for _stream, entries in response or ():
            for entry_id, fields in entries:
                last_id = entry_id
                if int(entry_id.split(b"-", 1)[0]) < oldest_ms:
                    self.dropped_expired += 1
                    continue
                try:
                    jobs.append(decode_job(fields[_FIELD]))
                except (KeyError, ValueError, TypeError):
                    logger.warning("dropping malformed push job %s", entry_id.decode())
        return last_id, jobs
