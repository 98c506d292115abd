"""arq settings of the event worker: `WorkerSettings`, its startup/shutdown, and `build_worker`."""

from __future__ import annotations

from typing import Any

from arq import Worker
from arq.connections import RedisSettings
from arq.worker import func

from notify_server.constants import JOB_PROCESS_EVENT
from notify_server.db import close_pool, create_pool
from notify_server.metrics import WorkerMetrics
from notify_server.notifications import NotificationRepository
from notify_server.presence import Presence
from notify_server.producer import DEFAULT_QUEUE, deserialize_job, serialize_job
from notify_server.push import StreamPushTransport
from notify_server.settings import Settings, load_settings
from workers import context
from workers.consumer import EventConsumer
from workers.jobs import process_event


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get(context.SETTINGS) or load_settings()
    settings.require_services()
    ctx[context.SETTINGS] = settings
    ctx[context.DB_POOL] = pool = await create_pool(settings.database)
    ctx[context.NOTIFICATIONS] = NotificationRepository(pool)
    ctx[context.PRESENCE] = Presence(ctx[context.REDIS], settings.presence.ttl_s)
    ctx[context.PUSH] = StreamPushTransport(
        ctx[context.REDIS],
        maxlen=settings.push.stream_maxlen,
        stream_ttl_s=settings.presence.ttl_s,
        job_expiry_s=settings.push.job_expiry_s,
    )
    ctx.setdefault(context.METRICS, WorkerMetrics())


async def shutdown(ctx: dict[str, Any]) -> None:
    pool = ctx.pop(context.DB_POOL, None)
    if pool is not None:
        await close_pool(pool)


class WorkerSettings:
    """For `arq workers.settings.WorkerSettings` too; `notify-server worker` fills these from config."""

    functions = [func(process_event, name=JOB_PROCESS_EVENT)]
    on_startup = startup
    on_shutdown = shutdown
    queue_name = DEFAULT_QUEUE
    job_serializer = serialize_job
    job_deserializer = deserialize_job


def build_worker(settings: Settings, **overrides: Any) -> EventConsumer:
    """The batched consumer for this config (workers/consumer.py); tests pass `burst=True, poll_delay=0`."""
    return EventConsumer(settings, **overrides)


def build_arq_worker(settings: Settings, **overrides: Any) -> Worker:
    """A plain arq Worker running `process_event` one job at a time (the reference the batched consumer
    is measured against in bench/)."""
    settings.require_services()
    worker_config = settings.worker
    options: dict[str, Any] = dict(
        functions=WorkerSettings.functions,
        queue_name=settings.queues.events,
        redis_settings=RedisSettings.from_dsn(settings.redis.url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={context.SETTINGS: settings},
        poll_delay=worker_config.poll_delay_s,
        max_jobs=worker_config.max_jobs,
        job_timeout=worker_config.job_timeout_s,
        max_tries=worker_config.max_tries,
        # SIGTERM: stop taking jobs and let the ones running finish (up to their timeout).
        job_completion_wait=int(worker_config.job_timeout_s),
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        keep_result=3600,
    )
    options.update(overrides)
    return Worker(**options)
