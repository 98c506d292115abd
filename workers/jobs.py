"""The arq job `process_event(ctx, event)`: the pipeline for one event, for plain arq workers
(`arq workers.settings.WorkerSettings`). `notify-server worker` runs the batched consumer instead,
which takes the same jobs off the same queue (workers/consumer.py)."""

from __future__ import annotations

import logging
import random
from typing import Any

from arq import Retry

from notify_server.events import event_id_for_log
from notify_server.settings import Settings
from workers import context
from workers.pipeline import TRANSIENT_ERRORS, EventFailed, process_events

logger = logging.getLogger("notify.worker")


def retry_delay_s(job_try: int, max_s: float) -> float:
    """Exponential backoff with full jitter: up to 0.5 s, 1 s, 2 s, … capped at max_s."""
    return random.uniform(0, min(max_s, 0.5 * 2 ** (job_try - 1)))


async def process_event(ctx: dict[str, Any], event: Any) -> dict[str, Any]:
    """Validate the event, store one notification per recipient (idempotent), then push them."""
    settings: Settings = ctx[context.SETTINGS]
    try:
        (result,) = await process_events(ctx, [event])
    except TRANSIENT_ERRORS as exc:
        delay_s = retry_delay_s(ctx.get("job_try", 1), settings.worker.retry_backoff_max_s)
        logger.warning(
            "event retried event_id=%s try=%s in=%.1fs error=%s",
            event_id_for_log(event), ctx.get("job_try"), delay_s, type(exc).__name__,
        )
        ctx[context.METRICS].events_retried.inc()
        raise Retry(defer=delay_s) from exc
    if isinstance(result, EventFailed):
        raise result
    return result
