"""arq jobs: `process_event`, the event pipeline (validate, render, store, then push)."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import psycopg2
import redis.exceptions
from arq import Retry

from notify_server.events import EventRejected, event_id_for_log, parse_event
from notify_server.frames import notification_frame
from notify_server.notifications import Notification, NotificationRepository
from notify_server.presence import Presence
from notify_server.push import PushItem
from notify_server.routing import group_by_node
from notify_server.settings import Settings
from workers import context

logger = logging.getLogger("notify.worker")

# Failures that pass: the same job will succeed once Postgres or Redis answers again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def retry_delay_s(job_try: int, max_s: float) -> float:
    """Exponential backoff with full jitter: up to 0.5 s, 1 s, 2 s, … capped at max_s."""
    return random.uniform(0, min(max_s, 0.5 * 2 ** (job_try - 1)))


async def process_event(ctx: dict[str, Any], event: Any) -> dict[str, Any]:
    """Validate the event, store one notification per recipient (idempotent), then push them."""
    settings: Settings = ctx[context.SETTINGS]
    started = time.perf_counter()
    try:
        new = parse_event(event, settings.templates)
    except EventRejected as exc:
        # Not retried: the same event would be rejected again. Nothing was stored.
        logger.warning("event rejected event_id=%s reason=%s", event_id_for_log(event), exc)
        return {"status": "rejected", "reason": str(exc)}

    repository: NotificationRepository = ctx[context.NOTIFICATIONS]
    try:
        stored = await repository.insert_many(new)
        await push_stored(ctx, stored)
    except TRANSIENT_ERRORS as exc:
        delay_s = retry_delay_s(ctx.get("job_try", 1), settings.worker.retry_backoff_max_s)
        logger.warning(
            "event retried event_id=%s try=%s in=%.1fs error=%s",
            new.event_id, ctx.get("job_try"), delay_s, type(exc).__name__,
        )
        raise Retry(defer=delay_s) from exc

    duration_ms = (time.perf_counter() - started) * 1000
    logger.info(
        "event processed event_id=%s recipients=%d stored=%d duration_ms=%.1f",
        new.event_id, len(new.recipients), len(stored), duration_ms,
    )
    return {"status": "stored", "recipients": len(new.recipients), "stored": len(stored)}


async def push_stored(ctx: dict[str, Any], stored: list[Notification]) -> int:
    """After the commit: one push job per node holding any recipient, carrying each online recipient's
    rendered frame and new unread count. Rows that already existed (a retried or duplicate event) are
    not pushed again; offline recipients get nothing pushed (their rows are stored). Returns jobs."""
    if not stored:
        return 0
    presence: Presence = ctx[context.PRESENCE]
    nodes = await presence.nodes_for_users([n.recipient_id for n in stored])
    if not nodes:
        return 0
    online = {user_id for users in nodes.values() for user_id in users}
    counts = await ctx[context.NOTIFICATIONS].count_unread_many(sorted(online))
    items = [
        PushItem(n.recipient_id, notification_frame(n), counts[n.recipient_id])
        for n in stored
        if n.recipient_id in online
    ]
    by_node = group_by_node(nodes, items)
    await ctx[context.PUSH].enqueue(by_node)
    return len(by_node)
