"""The worker's digest loop: ends the digest windows that are due and pushes their digests (issue 19).

Windows and held events live in Postgres (notify_server.storage.digests), never only in a worker's
memory. Every worker runs `DigestLoop.run` under its Supervisor beside the event consumer and looks for
due windows every `digests.poll_interval_s`; each flush takes its windows with SKIP LOCKED, so any
number of workers share them and none is delivered twice, and a worker killed mid-window leaves its
windows to the others (or to itself once restarted). A digest is stored through the store path — counted
like any notification — then pushed like the pipeline's rows (workers/pipeline.py push_stored), and
handed to web push for recipients who are away, as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time

from notify_server.core.stores import Fault, classify, describe, unavailable
from notify_server.core.supervisor import Backoff, LoopHealth, report_failure, stopping
from notify_server.storage.digests import Delivered
from workers.context import WorkerContext
from workers.pipeline import enqueue_web_push, push_stored

logger = logging.getLogger("notify.worker.digests")

DIGEST_LOOP_NAME = "digests"
# With no digest type in the config, the loop still looks for windows left by an earlier config, this often.
IDLE_INTERVAL_S = 60.0
PRUNE_INTERVAL_S = 60.0  # forgetting delivered held events and ended windows (storage/digests.py)
STORE_RETRY_MAX_S = 1.0


async def deliver_due_digests(context: WorkerContext) -> Delivered:
    """One flush: the digests of the windows due now, stored, then pushed."""
    delivered = await context.digests.deliver_due(context.settings.digests.batch_max)
    if not delivered.digests:
        return delivered
    metrics = context.metrics
    stored_rows = sum(len(event.notifications) for event in delivered.stored)
    metrics.digests_delivered.inc(stored_rows)
    metrics.digests_muted.inc(delivered.muted)
    metrics.notifications_stored.inc(stored_rows)
    for late_s in delivered.late_s:
        metrics.digest_delay.observe(late_s)
    logger.info("digests delivered digests=%d events=%d muted=%d max_late_ms=%.0f", stored_rows, delivered.events,
                delivered.muted, max(delivered.late_s, default=0.0) * 1000)
    try:
        reached: set[str] = set()
        metrics.push_jobs.inc(await push_stored(context, delivered.stored, reached=reached))
        await enqueue_web_push(context, delivered.stored, (), reached)  # away users: their browser's push
    except Exception as exc:  # stored and counted: open tabs catch up on their next connect or list
        if not unavailable(exc):
            raise
        logger.warning("digests stored but not pushed (%s)", describe(exc))
    return delivered


class DigestLoop:
    """Ends due windows for as long as it runs (a Supervisor runs it)."""

    def __init__(self, context: WorkerContext) -> None:
        self._context = context
        digests = context.settings.digests
        configured = any(template.digests for template in context.settings.templates.values())
        self.interval_s = digests.poll_interval_s if configured else IDLE_INTERVAL_S
        self._prune_at = time.monotonic() + PRUNE_INTERVAL_S
        self.flushes = 0

    async def run(self, health: LoopHealth) -> None:
        # Its own short backoff while a store is away (the supervisor's grows to 30 s): windows that ended
        # during an outage are delivered within a second of its end.
        backoff = Backoff(max_s=STORE_RETRY_MAX_S)
        while True:
            stopping()  # a stop the last statement's wait_for swallowed would sleep on for ever
            try:
                delivered = await deliver_due_digests(self._context)
                if time.monotonic() >= self._prune_at:
                    self._prune_at = time.monotonic() + PRUNE_INTERVAL_S
                    await self._context.digests.prune()
            except Exception as exc:
                stopping(exc)
                if classify(exc) is not Fault.TRANSIENT:
                    raise  # a bug or an unmigrated database: the supervisor logs it and restarts the loop
                delay_s = backoff.next()
                report_failure(DIGEST_LOOP_NAME, health, exc, delay_s)
                await asyncio.sleep(delay_s)
                continue
            backoff.reset()
            self.flushes += 1
            health.ok()
            if not delivered.full:  # after a full flush more may be due already: no pause
                await asyncio.sleep(self.interval_s)
