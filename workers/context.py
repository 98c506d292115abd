"""What the event pipeline runs with: one typed object, built from the settings, shared by both engines.

`notify-server worker` (workers/consumer.py) holds one; the plain arq worker keeps it in arq's `ctx`
under CTX_KEY (workers/settings.py). Building it connects nothing: pools open on first use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from redis.asyncio import Redis

from notify_server.core.metrics import WorkerMetrics
from notify_server.core.settings import Settings
from notify_server.ingest.eventqueue import EventQueue, RetryPolicy
from notify_server.storage.db import Database
from notify_server.storage.digests import DigestStore
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.preferences import PreferenceStore
from notify_server.transport.presence import Presence
from notify_server.transport.push import StreamPushTransport
from notify_server.transport.routing import PushRouter

CTX_KEY = "notify"  # arq's ctx[CTX_KEY] is the WorkerContext


@dataclasses.dataclass(eq=False)
class WorkerContext:
    settings: Settings
    redis: Redis
    db: Database
    notifications: NotificationRepository
    router: PushRouter
    queue: EventQueue
    policy: RetryPolicy
    metrics: WorkerMetrics
    preferences: PreferenceStore
    digests: DigestStore

    @classmethod
    def build(
        cls, settings: Settings, *, redis: Redis | None = None, metrics: WorkerMetrics | None = None
    ) -> WorkerContext:
        settings.require_services()
        client = redis if redis is not None else Redis.from_url(settings.redis.url, health_check_interval=30)
        db = Database(settings.database)
        transport = StreamPushTransport(
            client,
            maxlen=settings.push.stream_maxlen,
            stream_ttl_s=settings.presence.ttl_s,
            job_expiry_s=settings.push.job_expiry_s,
        )
        worker = settings.worker
        return cls(
            settings=settings,
            redis=client,
            db=db,
            notifications=NotificationRepository(db),
            router=PushRouter(Presence(client, settings.presence.ttl_s), transport),
            queue=EventQueue(client, settings.queues.events, job_timeout_s=worker.job_timeout_s),
            policy=RetryPolicy(worker.max_tries, worker.retry_backoff_max_s),
            metrics=metrics or WorkerMetrics(),
            preferences=PreferenceStore(db, settings.templates),
            digests=DigestStore(db, settings.templates),
        )

    async def close(self) -> None:
        await self.db.close()
        await self.redis.aclose()


def from_arq(ctx: dict[str, Any]) -> WorkerContext:
    context = ctx.get(CTX_KEY)
    if not isinstance(context, WorkerContext):
        raise RuntimeError("arq's ctx has no WorkerContext: the worker was started without workers.settings.startup")
    return context
