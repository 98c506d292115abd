"""What the event pipeline runs with: one typed object, built from the settings.

`notify-server worker` (workers/consumer.py) holds one. Building it connects nothing: pools open on first
use.
"""

from __future__ import annotations

import dataclasses

from redis.asyncio import Redis

from notify_server.core.metrics import WorkerMetrics
from notify_server.core.redis_client import redis_client
from notify_server.core.settings import Settings
from notify_server.ingest.eventqueue import EventQueue, RetryPolicy
from notify_server.storage.db import Database
from notify_server.storage.digests import DigestStore
from notify_server.storage.notifications import NotificationRepository
from notify_server.storage.preferences import PreferenceStore
from notify_server.transport.routing import PushRouter
from notify_server.transport.webpush_queue import WebPushQueue
from notify_server.transport.webpush_sender import AllowEveryone, ChannelFilter


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
    # The web push queue the pipeline appends to (None while web_push.enabled is false), and who may get
    # pushes on a channel (the users' preferences, the `web_push` channel).
    web_push: WebPushQueue | None = None
    channel_filter: ChannelFilter = dataclasses.field(default_factory=AllowEveryone)

    @classmethod
    def build(
        cls, settings: Settings, *, redis: Redis | None = None, metrics: WorkerMetrics | None = None
    ) -> WorkerContext:
        settings.require_services()
        client = redis if redis is not None else redis_client(settings.redis, health_check_interval=30)
        db = Database(settings.database)
        worker = settings.worker
        preferences = PreferenceStore(db, settings.templates)
        return cls(
            settings=settings,
            redis=client,
            db=db,
            notifications=NotificationRepository(db),
            router=PushRouter.writer(client, settings),
            queue=EventQueue(client, settings.queues.events, job_timeout_s=worker.job_timeout_s),
            policy=RetryPolicy(worker.max_tries, worker.retry_backoff_max_s),
            metrics=metrics or WorkerMetrics(),
            preferences=preferences,
            digests=DigestStore(db, settings.templates),
            web_push=WebPushQueue(client, maxlen=settings.web_push.queue_maxlen) if settings.web_push.enabled else None,
            channel_filter=preferences,
        )

    async def close(self) -> None:
        await self.db.close()
        await self.redis.aclose()

