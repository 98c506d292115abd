"""The producer side: how a web app's job (or `notify-server emit`) puts events on the event queue.

`enqueue_event` writes one `process_event` job in arq's key layout (notify_server.ingest.eventqueue), as JSON,
in one round trip, and wakes an idle worker; `enqueue_events` does the same for many events at once.
Jobs written by arq's own `enqueue_job` with its default pickle serializer are served as well
(README "Producers"). `EventProducer.from_settings` builds the Redis client from notify-server's own
settings (Sentinel, `redis.min_replicas_acked`), for producers that want exactly what `emit` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from arq.connections import ArqRedis
from arq.jobs import Job
from redis.asyncio import Redis

from notify_server.core.redis_client import redis_client
from notify_server.core.settings import Settings
from notify_server.ingest.eventqueue import DEFAULT_QUEUE, EventQueue, NotReplicated
from notify_server.ingest.jobcodec import arq_deserializer, arq_serializer

__all__ = ["DEFAULT_QUEUE", "EventProducer", "NotReplicated", "arq_pool", "enqueue_event", "enqueue_events"]


def _event_id(event: Any) -> str:
    event_id = event.get("event_id") if isinstance(event, Mapping) else None
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("event_id: a non-empty string is required (it is the idempotency key)")
    return event_id


async def enqueue_event(
    redis: Redis, event: Mapping[str, Any], *, queue_name: str = DEFAULT_QUEUE, min_replicas_acked: int = 0,
    replica_ack_timeout_ms: int = 1000,
) -> Job | None:
    """Enqueue `process_event(event)` with the event id as the arq job id.

    Returns None when a job with this event id is still queued or its result is still kept (arq's
    keep_result): the event is a duplicate and will not be processed twice. With min_replicas_acked > 0
    it returns once that many Redis replicas hold the job, or raises NotReplicated (retry it).
    """
    (job,) = await enqueue_events(redis, [event], queue_name=queue_name, min_replicas_acked=min_replicas_acked,
                                  replica_ack_timeout_ms=replica_ack_timeout_ms)
    return job


async def enqueue_events(
    redis: Redis, events: Sequence[Mapping[str, Any]], *, queue_name: str = DEFAULT_QUEUE,
    min_replicas_acked: int = 0, replica_ack_timeout_ms: int = 1000,
) -> list[Job | None]:
    """Enqueue many events in one round trip; one Job (or None for a duplicate) per event, in order.
    Every event needs an event_id (ValueError before anything is queued otherwise)."""
    jobs = [(_event_id(event), EventQueue.encode_event(dict(event))) for event in events]
    queued = await EventQueue(redis, queue_name).enqueue(
        jobs, min_replicas=min_replicas_acked, replica_timeout_ms=replica_ack_timeout_ms)
    # Job only calls plain Redis commands on its client: an ArqRedis built per call cost a fifth of the
    # producer's CPU (it rebuilds redis-py's response-callback table), so the caller's client serves.
    client = cast(ArqRedis, redis)
    return [
        Job(job_id, client, _queue_name=queue_name, _deserializer=arq_deserializer) if ok else None
        for (job_id, _), ok in zip(jobs, queued, strict=True)
    ]


def arq_pool(redis: Redis) -> ArqRedis:
    """An ArqRedis over an existing client's connections that reads both job formats (for `Job`)."""
    return ArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=arq_serializer,
        job_deserializer=arq_deserializer,
        default_queue_name=DEFAULT_QUEUE,
    )


class EventProducer:
    """`enqueue_event` with everything taken from notify-server's settings: the Redis client (plain URL or
    Sentinel, notify_server.core.redis_client), the queue, and `redis.min_replicas_acked`.

        async with EventProducer.from_settings(load_settings()) as producer:
            await producer.enqueue_event(event)
    """

    def __init__(self, redis: Redis, *, queue_name: str = DEFAULT_QUEUE, min_replicas_acked: int = 0,
                 replica_ack_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.min_replicas_acked = min_replicas_acked
        self.replica_ack_timeout_ms = replica_ack_timeout_ms

    @classmethod
    def from_settings(cls, settings: Settings, **redis_options: Any) -> EventProducer:
        """redis_options: redis-py's (socket_timeout, max_connections, ...); nothing connects yet."""
        settings.require_services()
        return cls(redis_client(settings.redis, **redis_options), queue_name=settings.queues.events,
                   min_replicas_acked=settings.redis.min_replicas_acked,
                   replica_ack_timeout_ms=settings.redis.replica_ack_timeout_ms)

    async def enqueue_event(self, event: Mapping[str, Any]) -> Job | None:
        (job,) = await self.enqueue_events([event])
        return job

    async def enqueue_events(self, events: Sequence[Mapping[str, Any]]) -> list[Job | None]:
        return await enqueue_events(self.redis, events, queue_name=self.queue_name,
                                    min_replicas_acked=self.min_replicas_acked,
                                    replica_ack_timeout_ms=self.replica_ack_timeout_ms)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> EventProducer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
