"""Who gets a batch's events now (issue 19): recipients who turned them off are dropped, and recipients
inside a digest window have them held (notify_server.storage.digests).

Both read Postgres for this batch, so a change made a moment ago is applied by every worker (nothing is
cached). What preferences cost a batch:
- every event critical: nothing;
- a small batch (the usual one at a few hundred events a second: one or two events for a user or two)
  without digest types: nothing extra. Its preferences are not read here; the store checks, in its own
  round trip, that none of its recipients holds any (`PreferenceStore.none_held`), and only when one does
  is the batch sent back here to read them (`may_defer=False`). A query of its own cost such a batch a
  sixth of the worker's CPU (bench/preferences.py);
- otherwise one query, for the recipients of its non-critical events; digest types one more call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from notify_server.core.preferences import IN_APP, muted_users
from notify_server.storage.digests import DigestCandidate
from notify_server.storage.notifications import NewNotifications
from workers.context import WorkerContext

# At most this many recipients (of non-critical events) in a batch for its preferences to be checked by the
# store: the more recipients, the likelier one of them holds preferences and the store is sent back.
DEFER_MAX_RECIPIENTS = 10


@dataclasses.dataclass(slots=True)
class Audience:
    """Per accepted event (by its index in the batch): what to store now, and what was kept from it."""

    now: list[tuple[int, NewNotifications]]  # events with the recipients to store now (none left: absent)
    muted: dict[int, int]  # recipients who turned the event's type off
    held: dict[int, int]  # recipients whose event waits in a digest window (digest types only)
    unchecked: list[str] = dataclasses.field(default_factory=list)  # preferences left to the store's check


async def select_audience(
    context: WorkerContext, accepted: Sequence[tuple[int, NewNotifications]], raw_events: Sequence[Any], *,
    may_defer: bool = False,
) -> Audience:
    """`raw_events[index]` is the event as sent (parsed already): a held event keeps its digest values.
    may_defer: a small batch without digest types may leave its preferences to the store's check."""
    templates = context.settings.templates
    audience = Audience([], {}, {})
    user_ids = [r.user_id for _, new in accepted if not templates[new.event_type].critical for r in new.recipients]
    if (may_defer and 0 < len(user_ids) <= DEFER_MAX_RECIPIENTS
            and not any(templates[new.event_type].digests for _, new in accepted)):
        audience.now = list(accepted)
        audience.muted = dict.fromkeys((index for index, _ in accepted), 0)
        audience.unchecked = user_ids
        return audience
    found = await context.preferences.load(user_ids) if user_ids else {}
    candidates: list[DigestCandidate] = []
    waiting: list[tuple[int, NewNotifications]] = []
    for index, new in accepted:
        template = templates[new.event_type]
        muted = muted_users(found, IN_APP, template, (r.user_id for r in new.recipients)) if found else set()
        audience.muted[index] = len(muted)
        if muted:
            new = dataclasses.replace(new, recipients=[r for r in new.recipients if r.user_id not in muted])
        if template.digests and new.recipients:
            data = raw_events[index].get("data") if isinstance(raw_events[index], Mapping) else None
            candidates.append(DigestCandidate(new, template.digest_window_s, template.digest_values(data or {})))
            waiting.append((index, new))
            continue
        if template.digests:
            audience.held[index] = 0
        if new.recipients:
            audience.now.append((index, new))
    if candidates:
        for (index, new), held in zip(waiting, await context.digests.route(candidates), strict=True):
            audience.held[index] = len(held)
            if held:
                new = dataclasses.replace(new, recipients=[r for r in new.recipients if r.user_id not in held])
            if new.recipients:
                audience.now.append((index, new))
        audience.now.sort(key=lambda item: item[0])
    return audience
