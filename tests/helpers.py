"""Small helpers the tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from notify_server.core.settings import Settings
from notify_server.storage.inbox import InboxFilter
from notify_server.storage.notifications import NewNotifications, Notification, NotificationRepository, StoredEvent
from workers.consumer import EventConsumer
from workers.context import WorkerContext
from workers.pipeline import Attempt, process_events


async def run_worker_burst(settings: Settings, **overrides: Any) -> EventConsumer:
    """Run the real worker (the batched consumer) until the event queue is empty, then close it;
    returns it for its counters (jobs_complete, jobs_failed, jobs_retried)."""
    options: dict[str, Any] = {"burst": True, "poll_delay": 0, "handle_signals": False}
    options.update(overrides)
    worker = EventConsumer(settings, **options)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


@asynccontextmanager
async def worker_context(settings: Settings) -> AsyncIterator[WorkerContext]:
    """What the worker's pipeline runs with, built as `notify-server worker` builds it."""
    context = WorkerContext.build(settings)
    try:
        yield context
    finally:
        await context.close()


async def process_one(context: WorkerContext, event: Any, job_try: int = 1) -> dict[str, Any]:
    """One event through the pipeline the worker runs for each batch (workers.pipeline.process_events),
    outside the queue: its result as the job's result would hold it. Raises StoreUnavailable when the
    worker would keep the batch for a retry."""
    (outcome,) = await process_events(context, [Attempt(event, job_try)])
    return outcome.result


# ---------------------------------------------------------------- the repository, one event or row at a time


async def store_one(repository: NotificationRepository, new: NewNotifications) -> StoredEvent:
    (stored,) = await repository.store_events([new])
    return stored


async def insert(repository: NotificationRepository, new: NewNotifications) -> list[Notification]:
    """The rows one event inserted (none for recipients already stored)."""
    return (await store_one(repository, new)).notifications


async def mark_read(repository: NotificationRepository, user_id: str, notification_id: str) -> Notification | None:
    await repository.change(user_id, "read", ids=[notification_id])
    return await repository.get(user_id, notification_id)


async def mark_all_read(repository: NotificationRepository, user_id: str) -> int:
    return len((await repository.change(user_id, "read", inbox=InboxFilter())).notification_ids)
