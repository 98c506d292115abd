"""The event pipeline for a batch of events: validate, render, choose who gets it now, store (one
transaction), then push.

The batched consumer (workers/consumer.py) runs it for every batch it claims.
Each event ends in one of four verdicts; store faults that concern the whole batch are raised as
StoreUnavailable (stores.py decides which faults those are):

- STORED: its rows are in Postgres (or were already) and pushed to the nodes holding its recipients,
  except for recipients who turned its type off ("muted") or whose digest window holds it ("held",
  workers/audience.py);
- REJECTED: it can never be stored as sent (malformed, or Postgres refuses one of its values): logged,
  result written, never retried;
- RETRY: it failed alone for a reason that is no store fault (a bug): retried a bounded number of times;
- (StoreUnavailable) Postgres or Redis cannot serve now, or the database is not migrated: the whole batch
  is kept and retried until it can.

A retried event pushes the rows an earlier try stored as well (that try may have died between the commit
and the push); clients drop a notification id they already have.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Sequence
from typing import Any

from notify_server.core.settings import WEB_PUSH_AWAY
from notify_server.core.stores import Fault, classify, describe
from notify_server.ingest.events import EventRejected, event_id_for_log, parse_event
from notify_server.storage.notifications import (
    NewNotifications,
    Notification,
    Precondition,
    PreconditionFailed,
    StoredEvent,
    UnreadState,
)
from notify_server.transport.frames import notification_frames
from notify_server.transport.push import PushItem
from workers.audience import Audience, select_audience
from workers.context import WorkerContext

logger = logging.getLogger("notify.worker")

# One transaction stores at most this many rows (a 10,000-recipient event gets one of its own).
MAX_ROWS_PER_TRANSACTION = 10_000
# Events with this many recipients store the ones online first, in a transaction of their own.
SPLIT_AT = 500


class Verdict(enum.Enum):
    STORED = "stored"
    REJECTED = "rejected"
    RETRY = "retry"


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One event as a producer sent it, and which try of its job this is (1 = first)."""

    event: Any
    job_try: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class EventResult:
    verdict: Verdict
    result: dict[str, Any]  # what `Job.result()` returns: {"status": "stored" | "rejected", …}


class StoreUnavailable(Exception):
    """Postgres or Redis cannot take this batch now; keep it and try again later."""

    def __init__(self, fault: Fault, cause: BaseException) -> None:
        super().__init__(f"{fault.value}: {describe(cause)}")
        self.fault = fault
        self.cause = cause


def _rejected(reason: str) -> EventResult:
    return EventResult(Verdict.REJECTED, {"status": "rejected", "reason": reason})


def _retry(reason: str) -> EventResult:
    return EventResult(Verdict.RETRY, {"status": "failed", "reason": reason})


def _raise_if_unavailable(exc: BaseException) -> Fault | None:
    fault = classify(exc)
    if fault is Fault.TRANSIENT or fault is Fault.MISCONFIGURED:
        raise StoreUnavailable(fault, exc) from exc
    return fault


async def process_events(context: WorkerContext, attempts: Sequence[Attempt]) -> list[EventResult]:
    """One result per attempt, in order; raises StoreUnavailable when the whole batch must wait."""
    metrics = context.metrics
    started = time.perf_counter()
    results: list[EventResult | None] = [None] * len(attempts)
    accepted: list[tuple[int, NewNotifications]] = []
    seen_ids: set[str] = set()
    for index, attempt in enumerate(attempts):
        try:
            new = parse_event(attempt.event, context.settings.templates)
        except EventRejected as exc:
            logger.warning("event rejected event_id=%s reason=%s", event_id_for_log(attempt.event), exc)
            metrics.events_rejected.labels(exc.field).inc()
            results[index] = _rejected(str(exc))
            continue
        except Exception as exc:  # a bug of ours on this input: retried alone, a bounded number of times
            logger.exception("event failed to parse event_id=%s", event_id_for_log(attempt.event))
            results[index] = _retry(f"internal error: {type(exc).__name__}")
            continue
        if new.event_id in seen_ids:  # the same event twice in one batch: the first one stores it
            results[index] = EventResult(Verdict.STORED, {"status": "stored", "recipients": len(new.recipients),
                                                          "stored": 0, "muted": 0})
            continue
        seen_ids.add(new.event_id)
        accepted.append((index, new))

    stored_rows = dict.fromkeys((index for index, _ in accepted), 0)
    retried = {new.event_id for index, new in accepted if attempts[index].job_try > 1}
    raw_events = [attempt.event for attempt in attempts]
    audience = await _select_audience(context, accepted, raw_events, may_defer=True)
    try:
        await _store_and_push(context, audience, results, stored_rows, retried)
    except PreconditionFailed:  # a recipient of this small batch holds preferences: read them, then store
        audience = await _select_audience(context, accepted, raw_events, may_defer=False)
        await _store_and_push(context, audience, results, stored_rows, retried)
    for index, new in accepted:
        if results[index] is None:
            counts: dict[str, Any] = {"status": "stored", "recipients": len(new.recipients),
                                      "stored": stored_rows[index], "muted": audience.muted.get(index, 0)}
            if index in audience.held:
                counts["held"] = audience.held[index]
            results[index] = EventResult(Verdict.STORED, counts)
    metrics.recipients_muted.inc(sum(audience.muted.values()))
    metrics.digest_events_held.inc(sum(audience.held.values()))

    duration_ms = (time.perf_counter() - started) * 1000
    for index, new in accepted:
        result = results[index]
        if result is not None and result.verdict is Verdict.STORED:
            metrics.events_processed.inc()
            logger.info(
                "event processed event_id=%s recipients=%d stored=%d muted=%d held=%d batch=%d duration_ms=%.1f",
                new.event_id, len(new.recipients), result.result["stored"], result.result["muted"],
                result.result.get("held", 0), len(attempts), duration_ms,
            )
    metrics.job_duration.observe(duration_ms / 1000)
    return [r if r is not None else _retry("not processed") for r in results]


async def _select_audience(
    context: WorkerContext, accepted: list[tuple[int, NewNotifications]], raw_events: list[Any], *, may_defer: bool
) -> Audience:
    """Preferences and digest windows: who gets each event now (workers/audience.py)."""
    try:
        return await select_audience(context, accepted, raw_events, may_defer=may_defer)
    except Exception as exc:
        _raise_if_unavailable(exc)
        raise


async def _store_and_push(
    context: WorkerContext, audience: Audience, results: list[EventResult | None], stored_rows: dict[int, int],
    retried: set[str],
) -> None:
    """Store the audience's events, a transaction at a time, each pushed right after its commit. When the
    audience left preferences unchecked, the first store carries the check (`none_held`) in its own round
    trip and raises PreconditionFailed, having stored and pushed nothing, if a recipient holds any."""
    metrics = context.metrics
    precondition = context.preferences.none_held(audience.unchecked) if audience.unchecked else None
    for chunk in _chunks(await _online_first(context, audience.now)):
        outcomes = await _store(context, [new for _, new in chunk], precondition)
        precondition = None  # checked: it held for the whole batch
        stored_now: list[StoredEvent] = []
        for (index, new), outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, EventResult):
                results[index] = outcome
                retried.discard(new.event_id)
                continue
            stored_now.append(outcome)
            stored_rows[index] += len(outcome.notifications)
            metrics.notifications_stored.inc(len(outcome.notifications))
        try:  # right after each commit, so a large event's online recipients are not kept waiting
            earlier = await _stored_earlier(context, [n.event_id for _, n in chunk if n.event_id in retried],
                                            stored_now)
            reached: set[str] = set()
            metrics.push_jobs.inc(await push_stored(context, stored_now, earlier, reached=reached))
            if context.web_push is not None:
                await enqueue_web_push(context, stored_now, earlier, reached)
        except Exception as exc:  # the rows are committed: a retry of the batch pushes them again
            _raise_if_unavailable(exc)
            raise


async def _online_first(
    context: WorkerContext, accepted: list[tuple[int, NewNotifications]]
) -> list[tuple[int, NewNotifications, bool]]:
    """(index, part, ends its transaction) units to store in order. An event with at least SPLIT_AT
    recipients is stored in two transactions, the recipients online now first, so their tabs are
    served after a commit of their own rows rather than of all 10,000 (every recipient is still looked
    up again after its own commit before anything is pushed: someone connecting meanwhile is not missed).
    """
    units: list[tuple[int, NewNotifications, bool]] = []
    for index, new in accepted:
        if len(new.recipients) < SPLIT_AT:
            units.append((index, new, False))
            continue
        online = await context.router.online([r.user_id for r in new.recipients])
        first = [r for r in new.recipients if r.user_id in online]
        rest = [r for r in new.recipients if r.user_id not in online]
        if first and rest:
            units += [(index, dataclasses.replace(new, recipients=first), True),
                      (index, dataclasses.replace(new, recipients=rest), True)]
        else:
            units.append((index, new, True))
    return units


def _chunks(units: list[tuple[int, NewNotifications, bool]]) -> list[list[tuple[int, NewNotifications]]]:
    """Transactions of at most MAX_ROWS_PER_TRANSACTION rows; a unit marked alone gets its own."""
    chunks: list[list[tuple[int, NewNotifications]]] = []
    rows = 0
    closed = True
    for index, new, alone in units:
        size = len(new.recipients)
        if closed or alone or rows + size > MAX_ROWS_PER_TRANSACTION:
            chunks.append([])
            rows = 0
        chunks[-1].append((index, new))
        rows += size
        closed = alone
    return chunks


async def _store(
    context: WorkerContext, events: list[NewNotifications], precondition: Precondition | None = None
) -> list[StoredEvent | EventResult]:
    """All in one transaction; when Postgres refuses it for a reason that is not a store outage, event by
    event, so that one bad event does not take its batch down with it."""
    try:
        return list(await context.notifications.store_events(events, precondition=precondition))
    except PreconditionFailed:
        raise
    except Exception as exc:
        fault = _raise_if_unavailable(exc)
        if len(events) == 1:
            event_id = event_id_for_log({"event_id": events[0].event_id})
            if fault is Fault.EVENT:
                logger.warning("event rejected event_id=%s reason=database refused a value (%s)", event_id,
                               describe(exc))
                context.metrics.events_rejected.labels("database").inc()
                return [_rejected(f"database: a value was refused ({describe(exc)})")]
            logger.error("event failed event_id=%s error=%s", event_id, describe(exc), exc_info=exc)
            return [_retry(f"internal error: {describe(exc)}")]
    results: list[StoredEvent | EventResult] = []
    for new in events:
        results.extend(await _store(context, [new], precondition))
    return results


async def _stored_earlier(
    context: WorkerContext, event_ids: list[str], stored_now: Sequence[StoredEvent]
) -> list[tuple[Notification, UnreadState]]:
    """Rows of retried events that an earlier try stored (not inserted by this one), with the current
    unread state of their recipients."""
    if not event_ids:
        return []
    inserted = {n.notification_id for event in stored_now for n in event.notifications}
    rows = [n for n in await context.notifications.of_events(event_ids) if n.notification_id not in inserted]
    if not rows:
        return []
    states = await context.notifications.unread_states(list({n.recipient_id: None for n in rows}))
    return [(n, states[n.recipient_id]) for n in rows]


async def push_stored(
    context: WorkerContext, stored: Sequence[StoredEvent], earlier: Sequence[tuple[Notification, UnreadState]] = (),
    *, reached: set[str] | None = None,
) -> int:
    """After the commit: one push job per node holding any recipient, carrying each online recipient's
    rendered frames and new unread count. Offline recipients get nothing pushed (their rows are
    stored). Returns push jobs written; `reached` gets the recipients some node held."""
    pending = [(n, event.unread.get(n.recipient_id)) for event in stored for n in event.notifications]
    pending += earlier
    if not pending:
        return 0

    def items_for(online: set[str]) -> list[PushItem]:
        if reached is not None:
            reached.update(online)
        mine = [(n, unread) for n, unread in pending if n.recipient_id in online]
        frames = notification_frames([n for n, _ in mine])
        return [
            PushItem(n.recipient_id, frames[n.notification_id], n.notification_id,
                     unread.count if unread else None, unread.version if unread else None,
                     unread.unseen if unread else None)
            for n, unread in mine
        ]

    return await context.router.route({n.recipient_id for n, _ in pending}, items_for)


# ---------------------------------------------------------------- web push
async def enqueue_web_push(
    context: WorkerContext, stored: Sequence[StoredEvent], earlier: Sequence[tuple[Notification, UnreadState]],
    reached: set[str],
) -> None:
    """Hand the rows to the workers' web push loop (notify_server.transport.webpush_sender): one XADD per
    500 recipients, nothing sent from here. Under `web_push.when: away` the recipients the WebSocket push
    just reached are left out (the sender checks presence again before it sends): an event whose
    recipients are all online costs nothing more."""
    if context.web_push is None:
        return
    skip = reached if context.settings.web_push.when == WEB_PUSH_AWAY else set()
    rows = [n for event in stored for n in event.notifications] + [n for n, _ in earlier]
    await context.web_push.enqueue([n for n in rows if n.recipient_id not in skip])
