"""The event pipeline for a batch of events: validate, render, store (one transaction), then push.

Used by the batched consumer (workers/consumer.py) and by the plain arq job `process_event`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.errors

from notify_server.events import EventRejected, event_id_for_log, parse_event
from notify_server.frames import notification_frames
from notify_server.metrics import WorkerMetrics
from notify_server.notifications import NewNotifications, NotificationRepository, StoredEvent
from notify_server.presence import Presence
from notify_server.push import PushItem
from notify_server.routing import group_by_node
from notify_server.settings import Settings
from notify_server.stores import STORE_ERRORS
from workers import context

logger = logging.getLogger("notify.worker")

# Failures that pass: the same events will go through once Postgres or Redis answers again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    *STORE_ERRORS,
    psycopg2.errors.DeadlockDetected,  # two batches racing on the same unread counters
    psycopg2.errors.SerializationFailure,
)

# One transaction stores at most this many rows (a 10,000-recipient event gets one of its own).
MAX_ROWS_PER_TRANSACTION = 10_000


class EventFailed(Exception):
    """An accepted event that could not be stored for a reason a retry will not fix."""


def _chunks(events: list[tuple[int, NewNotifications]]) -> list[list[tuple[int, NewNotifications]]]:
    chunks: list[list[tuple[int, NewNotifications]]] = [[]]
    rows = 0
    for entry in events:
        size = len(entry[1].recipients)
        if chunks[-1] and rows + size > MAX_ROWS_PER_TRANSACTION:
            chunks.append([])
            rows = 0
        chunks[-1].append(entry)
        rows += size
    return chunks


async def process_events(ctx: dict[str, Any], events: Sequence[Any]) -> list[dict[str, Any] | EventFailed]:
    """One result per event, in order: {"status": "stored" | "rejected", …} or an EventFailed.
    Raises one of TRANSIENT_ERRORS when the whole batch should be retried later."""
    settings: Settings = ctx[context.SETTINGS]
    metrics: WorkerMetrics = ctx[context.METRICS]
    repository: NotificationRepository = ctx[context.NOTIFICATIONS]
    started = time.perf_counter()
    results: list[dict[str, Any] | EventFailed | None] = [None] * len(events)
    accepted: list[tuple[int, NewNotifications]] = []
    seen_ids: set[str] = set()
    for index, raw in enumerate(events):
        try:
            new = parse_event(raw, settings.templates)
        except EventRejected as exc:
            # Not retried: the same event would be rejected again. Nothing is stored.
            logger.warning("event rejected event_id=%s reason=%s", event_id_for_log(raw), exc)
            metrics.events_rejected.labels(str(exc).split(":", 1)[0]).inc()
            results[index] = {"status": "rejected", "reason": str(exc)}
            continue
        if new.event_id in seen_ids:  # the same event twice in one batch: the first one stores it
            results[index] = {"status": "stored", "recipients": len(new.recipients), "stored": 0}
            continue
        seen_ids.add(new.event_id)
        accepted.append((index, new))

    stored_all: list[StoredEvent] = []
    for chunk in _chunks(accepted):
        if not chunk:
            continue
        for (index, new), stored in zip(chunk, await _store(repository, [new for _, new in chunk]), strict=True):
            if isinstance(stored, EventFailed):
                results[index] = stored
                continue
            stored_all.append(stored)
            results[index] = {
                "status": "stored", "recipients": len(new.recipients), "stored": len(stored.notifications),
            }
            metrics.notifications_stored.inc(len(stored.notifications))
    metrics.push_jobs.inc(await push_stored(ctx, stored_all))

    duration_ms = (time.perf_counter() - started) * 1000
    for index, new in accepted:
        result = results[index]
        if isinstance(result, dict):
            metrics.events_processed.inc()
            logger.info(
                "event processed event_id=%s recipients=%d stored=%d batch=%d duration_ms=%.1f",
                new.event_id, len(new.recipients), result["stored"], len(events), duration_ms,
            )
    metrics.job_duration.observe(duration_ms / 1000)
    return [r if r is not None else EventFailed("not processed") for r in results]


async def _store(repository: NotificationRepository, events: list[NewNotifications]) -> list[StoredEvent | EventFailed]:
    """All in one transaction; when that fails for a reason other than a passing fault, event by event,
    so one bad event does not take its batch down with it."""
    try:
        return list(await repository.store_events(events))
    except TRANSIENT_ERRORS:
        raise
    except psycopg2.Error as exc:
        if len(events) == 1:
            logger.error("event failed event_id=%s error=%s", event_id_for_log({"event_id": events[0].event_id}),
                         type(exc).__name__)
            return [EventFailed(type(exc).__name__)]
    results: list[StoredEvent | EventFailed] = []
    for new in events:
        results.extend(await _store(repository, [new]))
    return results


async def push_stored(ctx: dict[str, Any], stored: Sequence[StoredEvent]) -> int:
    """After the commit: one push job per node holding any recipient, carrying each online recipient's
    rendered frames and new unread count. Rows that already existed (a retried or duplicate event) are
    not pushed again; offline recipients get nothing pushed (their rows are stored). Returns jobs."""
    notifications = [n for event in stored for n in event.notifications]
    if not notifications:
        return 0
    presence: Presence = ctx[context.PRESENCE]
    nodes = await presence.nodes_for_users(list({n.recipient_id: None for n in notifications}))
    if not nodes:
        return 0
    online = {user_id for users in nodes.values() for user_id in users}
    frames = notification_frames([n for n in notifications if n.recipient_id in online])
    items = []
    for event in stored:
        for n in event.notifications:
            if n.recipient_id in online:
                unread = event.unread.get(n.recipient_id)
                items.append(PushItem(
                    n.recipient_id, frames[n.notification_id], n.notification_id,
                    unread.count if unread else None, unread.version if unread else None,
                ))
    by_node = group_by_node(nodes, items)
    await ctx[context.PUSH].enqueue(by_node)
    return len(by_node)
