"""Who gets a batch's events now (issue 19): recipients who turned them off are dropped, and recipients
inside a digest window have them held (notify_server.storage.digests).

Preferences cost one query per batch, for the recipients of its non-critical events, and nothing when
every event of the batch is critical; the events of digest types cost one more call. Both read Postgres
for this batch, so a change made a moment ago is applied by every worker (nothing is cached).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from notify_server.core.preferences import IN_APP, muted_users
from notify_server.storage.digests import DigestCandidate
from notify_server.storage.notifications import NewNotifications
from workers.context import WorkerContext


@dataclasses.dataclass(slots=True)
class Audience:
    """Per accepted event (by its index in the batch): what to store now, and what was kept from it."""

    now: list[tuple[int, NewNotifications]]  # events with the recipients to store now (none left: absent)
    muted: dict[int, int]  # recipients who turned the event's type off
    held: dict[int, int]  # recipients whose event waits in a digest window (digest types only)


async def select_audience(
    context: WorkerContext, accepted: Sequence[tuple[int, NewNotifications]], raw_events: Sequence[Any]
) -> Audience:
    """`raw_events[index]` is the event as sent (parsed already): a held event keeps its digest values."""
    templates = context.settings.templates
    audience = Audience([], {}, {})
    user_ids = [r.user_id for _, new in accepted if not templates[new.event_type].critical for r in new.recipients]
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
