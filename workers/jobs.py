"""The arq job `process_event(ctx, event)`, for a plain arq worker (`arq workers.settings.WorkerSettings`).

It runs the same pipeline as `notify-server worker` (workers/pipeline.py) one event at a time, with the
same retry policy (notify_server.ingest.eventqueue.RetryPolicy): a store fault raises arq's `Retry` with backoff
for as long as it lasts; another failure of the event is retried up to `worker.max_tries`, then fails.
"""

from __future__ import annotations

import logging
from typing import Any

from arq import Retry
from arq.worker import JobExecutionFailed

from notify_server.ingest.events import event_id_for_log
from workers.context import from_arq
from workers.pipeline import Attempt, StoreUnavailable, Verdict, process_events

logger = logging.getLogger("notify.worker")


async def process_event(ctx: dict[str, Any], event: Any) -> dict[str, Any]:
    """Validate the event, store one notification per recipient (idempotent), then push them."""
    context = from_arq(ctx)
    job_try = int(ctx.get("job_try", 1))
    try:
        (outcome,) = await process_events(context, [Attempt(event, job_try)])
    except StoreUnavailable as exc:
        delay_s = context.policy.delay_s(job_try)
        logger.warning("event retried event_id=%s try=%d in=%.1fs error=%s", event_id_for_log(event), job_try,
                       delay_s, exc)
        context.metrics.events_retried.inc()
        raise Retry(defer=delay_s) from exc
    if outcome.verdict is Verdict.RETRY:
        reason = str(outcome.result.get("reason"))
        if context.policy.gives_up(job_try, store_fault=False):
            raise JobExecutionFailed(reason)
        context.metrics.events_retried.inc()
        raise Retry(defer=context.policy.delay_s(job_try))
    return outcome.result
