"""arq's own Worker running the event pipeline: its options for a configuration (`arq_worker_options`).

Used by `arq workers.settings.WorkerSettings` (which loads the configuration when arq imports it) and by
bench/arq_worker.py. It runs the same pipeline as `notify-server worker` (workers/jobs.py), which is the
faster engine and the one to prefer; this one exists for deployments that already run arq workers.
"""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings
from arq.worker import func

from notify_server.core.constants import JOB_PROCESS_EVENT
from notify_server.core.settings import Settings
from notify_server.ingest.eventqueue import KEEP_RESULT_S
from notify_server.ingest.jobcodec import arq_deserializer, arq_serializer
from workers.context import CTX_KEY, WorkerContext
from workers.jobs import process_event

# arq must never give up on its own: the pipeline's RetryPolicy decides (store faults wait for ever).
ARQ_MAX_TRIES = 1_000_000


def arq_worker_options(settings: Settings) -> dict[str, Any]:
    """arq Worker keyword arguments for these settings (also what WorkerSettings holds)."""
    settings.require_services()
    worker = settings.worker

    async def startup(ctx: dict[str, Any]) -> None:
        ctx[CTX_KEY] = WorkerContext.build(settings)

    async def shutdown(ctx: dict[str, Any]) -> None:
        context = ctx.pop(CTX_KEY, None)
        if isinstance(context, WorkerContext):
            await context.close()

    return {
        "functions": [func(process_event, name=JOB_PROCESS_EVENT)],
        "queue_name": settings.queues.events,
        "redis_settings": RedisSettings.from_dsn(settings.redis.url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "poll_delay": worker.poll_delay_s,
        "max_jobs": worker.max_jobs,
        "job_timeout": worker.job_timeout_s,
        "max_tries": ARQ_MAX_TRIES,
        # SIGTERM: stop taking jobs and let the ones running finish (up to their timeout).
        "job_completion_wait": int(worker.job_timeout_s),
        "job_serializer": arq_serializer,
        "job_deserializer": arq_deserializer,
        "keep_result": KEEP_RESULT_S,
    }
