"""The producer side: how a web app's job (or `notify-server emit`) puts an event on the event queue.

Event jobs are arq jobs serialised as JSON (not arq's default pickle), so producers in any language can
write them and a worker never unpickles data from Redis. README "Producers" shows the raw Redis calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.jobs import Job
from redis.asyncio import Redis

from notify_server.constants import JOB_PROCESS_EVENT

DEFAULT_QUEUE = "notify:events"
WAKE_SUFFIX = ":wake"


def serialize_job(job: dict[str, Any]) -> bytes:
    return orjson.dumps(job)


def deserialize_job(payload: bytes) -> dict[str, Any]:
    return orjson.loads(payload)


def arq_pool(redis: Redis) -> ArqRedis:
    """An ArqRedis speaking our JSON job format over an existing client's connection pool."""
    if isinstance(redis, ArqRedis) and redis.job_serializer is serialize_job:
        return redis
    return ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        default_queue_name=DEFAULT_QUEUE,
    )


async def enqueue_event(redis: Redis, event: Mapping[str, Any], *, queue_name: str = DEFAULT_QUEUE) -> Job | None:
    """Enqueue `process_event(event)` with the event id as the arq job id.

    Returns None when a job with this event id is still queued or its result is still kept (arq's
    keep_result): the event is a duplicate and will not be processed twice.
    """
    event_id = event.get("event_id") if isinstance(event, Mapping) else None
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("event_id: a non-empty string is required (it is the idempotency key)")
    job = await arq_pool(redis).enqueue_job(JOB_PROCESS_EVENT, dict(event), _job_id=event_id, _queue_name=queue_name)
    if job is not None:
        await wake_workers(redis, queue_name)
    return job


def wake_key(queue_name: str) -> str:
    """A list a waiting worker blocks on (BLPOP), so it takes a new event at once instead of at its
    next poll; producers that skip it are still served within `worker.poll_delay_s`."""
    return queue_name + WAKE_SUFFIX


async def wake_workers(redis: Redis, queue_name: str = DEFAULT_QUEUE) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(wake_key(queue_name), b"1")
        pipe.ltrim(wake_key(queue_name), 0, 0)  # one token is enough: a woken worker drains the queue
        await pipe.execute()
