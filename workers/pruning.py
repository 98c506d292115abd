"""The worker's retention prune: `notify-server prune` once, or every `retention.interval_s` in a worker.

The SQL is notify_server.storage.retention's; this wires it to the worker's database, its routing path (the
lowered unread counts go to the users' open tabs) and its metrics, and keeps the schedule. A worker runs
`PruneLoop.run` under its Supervisor beside the event consumer: a prune that fails (Postgres away, a
bug) is logged and retried, and never ends the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time

from notify_server.core.stores import unavailable
from notify_server.core.supervisor import LoopHealth, stopping
from notify_server.storage.retention import Pruner, PruneResult
from workers.context import WorkerContext

logger = logging.getLogger("notify.worker.prune")

PRUNE_LOOP_NAME = "retention"
# A worker's first prune comes this long after it starts (or after interval_s when shorter): not in the
# way of a start-up, and still made by workers that restart more often than interval_s.
FIRST_PRUNE_AFTER_MAX_S = 60.0


def pruner_for(context: WorkerContext) -> Pruner:
    return Pruner(context.db, context.settings.retention, push_counts=context.router.push_unread_counts)


async def prune_once(context: WorkerContext, *, dry_run: bool = False) -> PruneResult | None:
    """One prune (or its dry run); None when another prune holds the lock."""
    pruner = pruner_for(context)
    if dry_run:
        return await pruner.count()
    started = time.monotonic()
    result = await pruner.prune()
    if result is None:
        return None
    for kind, rows in (("read", result.read), ("unread", result.unread), ("archived", result.archived),
                       ("sessions", result.sessions)):
        context.metrics.rows_pruned.labels(kind).inc(rows)
    duration_ms = (time.monotonic() - started) * 1000
    level = logging.INFO if result.total else logging.DEBUG
    logger.log(level, "pruned %s duration_ms=%.0f", result.summary(), duration_ms)
    return result


class PruneLoop:
    """Prunes every `retention.interval_s` for as long as it runs (a Supervisor runs it)."""

    def __init__(self, context: WorkerContext) -> None:
        self._context = context
        self._interval_s = context.settings.retention.interval_s
        # Kept across restarts by the supervisor: a prune that failed is due again at once (after the
        # supervisor's backoff), not an interval later.
        self._due_at = time.monotonic() + min(self._interval_s, FIRST_PRUNE_AFTER_MAX_S)
        self.runs = 0  # prunes finished (skipped ones included)

    async def run(self, health: LoopHealth) -> None:
        while True:
            stopping()  # a stop the last statement's wait_for swallowed would sleep on for ever
            await asyncio.sleep(max(0.0, self._due_at - time.monotonic()))
            try:
                if await prune_once(self._context) is None:
                    logger.info("prune skipped: another prune is running; the next in %gs", self._interval_s)
            except Exception as exc:
                if not unavailable(exc):
                    # Not a store away (a bug, a refused statement): retrying at once would fail the
                    # same way; the next try is an interval later. The supervisor logs it either way.
                    self._due_at = time.monotonic() + self._interval_s
                raise
            self._due_at = time.monotonic() + self._interval_s
            self.runs += 1
            health.ok()
