"""The inbox's vocabulary as SQL (issue 18): the three states of a notification, the filters of lists and
counts, and the actions that change a state — with how each change moves a user's counters.

States are timestamps, null until set: `read_at`, `seen_at`, `archived_at`. Marking read also marks seen,
so "seen" is `seen_at` or `read_at` (rows read before migration 0007 have no `seen_at` and are seen).
The counters (`unread_counters.unread` / `.unseen`) count notifications that are not archived.

Every action is one statement (`action_sql`): it locks the rows it will change (in id order: two actions
of one user never deadlock), changes them, and moves the user's counters by the difference between each
row's old and new state — the row locks are taken before the counter's, the order every other writer
(storing, pruning) keeps. Only rows whose state changes are touched, so an action is idempotent and a
repeated one changes no count and bumps no version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

# A row as the counters count it (t: the row's alias).
_UNREAD = "({t}.read_at IS NULL AND {t}.archived_at IS NULL)"
_UNSEEN = "({t}.seen_at IS NULL AND {t}.read_at IS NULL AND {t}.archived_at IS NULL)"

# The item's seen_at as clients see it: a row read before migration 0007 was seen when it was read.
SEEN_AT = "coalesce(seen_at, read_at) AS seen_at"


@dataclasses.dataclass(frozen=True)
class InboxFilter:
    """Which of a user's notifications a list, a count or an action is about. None: either way."""

    read: bool | None = None
    seen: bool | None = None
    archived: bool | None = False  # the inbox; True: the archived ones; None: all
    event_types: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ()

    def clauses(self) -> tuple[list[str], dict[str, Any]]:
        """SQL conditions (on `notifications`, unaliased) and their parameters; all must hold."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.archived is not None:
            clauses.append("archived_at IS NOT NULL" if self.archived else "archived_at IS NULL")
        if self.read is not None:
            clauses.append("read_at IS NOT NULL" if self.read else "read_at IS NULL")
        if self.seen is not None:
            clauses.append("(seen_at IS NOT NULL OR read_at IS NOT NULL)" if self.seen
                           else "seen_at IS NULL AND read_at IS NULL")
        if self.event_types:
            clauses.append("event_type = ANY(%(f_types)s::text[])")
            params["f_types"] = list(self.event_types)
        if self.priorities:
            clauses.append("priority = ANY(%(f_priorities)s::text[])")
            params["f_priorities"] = list(self.priorities)
        return clauses, params


@dataclasses.dataclass(frozen=True)
class Action:
    """One state change: the rows it changes (the others are already as it leaves them), how, and what
    the `notifications_updated` frame says of the rows it changed."""

    name: str
    changes: str
    assign: str
    flags: dict[str, bool]


ACTIONS: dict[str, Action] = {a.name: a for a in (
    # Marking read marks seen too (keeping a seen_at already set); the frame says both.
    Action("read", "read_at IS NULL", "read_at = now(), seen_at = coalesce(seen_at, now())",
           {"read": True, "seen": True}),
    # Unread keeps the row seen: a row read before 0007 gets its read_at as seen_at.
    Action("unread", "read_at IS NOT NULL", "read_at = NULL, seen_at = coalesce(seen_at, read_at)", {"read": False}),
    Action("seen", "seen_at IS NULL AND read_at IS NULL", "seen_at = now()", {"seen": True}),
    Action("archive", "archived_at IS NULL", "archived_at = now()", {"archived": True}),
    Action("unarchive", "archived_at IS NOT NULL", "archived_at = NULL", {"archived": False}),
)}


@dataclasses.dataclass(frozen=True)
class Counts:
    """A user's notifications that are not archived (of some types and priorities)."""

    unread: int
    unseen: int
    total: int


def action_sql(action: Action, scope: Sequence[str]) -> str:
    """One statement that applies `action` to the user's (%(user)s) notifications matching every SQL
    condition of `scope`; it returns one row: the ids it changed (or NULL), and the user's counter as it
    left it — unread, unseen, version — or NULLs when no count changed (no version is used up)."""
    where = " AND ".join(["recipient_id = %(user)s", *scope, f"({action.changes})"])
    unread_delta = f"{_UNREAD.format(t='n')}::int - {_UNREAD.format(t='t')}::int"
    unseen_delta = f"{_UNSEEN.format(t='n')}::int - {_UNSEEN.format(t='t')}::int"
    return (
        # Locked in id order (two actions of one user cannot deadlock); each row is read as it is once
        # locked, so a concurrent change that committed first is seen, not counted twice.
        f"WITH target AS (SELECT notification_id, read_at, seen_at, archived_at FROM notifications"
        f" WHERE {where} ORDER BY notification_id FOR UPDATE),"
        # By id, as an array (primary-key look-ups; a join back may be planned as a scan of the table). Not
        # by ctid: a row a concurrent change committed while we waited for it has a new ctid, which this
        # statement's snapshot does not see, and the row would be skipped.
        f" changed AS (UPDATE notifications SET {action.assign}"
        f" WHERE notification_id = ANY(ARRAY(SELECT notification_id FROM target))"
        f" RETURNING notification_id, read_at, seen_at, archived_at),"
        f" delta AS (SELECT coalesce(sum({unread_delta}), 0) AS unread, coalesce(sum({unseen_delta}), 0) AS unseen"
        f" FROM changed n JOIN target t USING (notification_id)),"
        f" counter AS (INSERT INTO unread_counters AS c (user_id, unread, unseen, version)"
        f" SELECT %(user)s, GREATEST(d.unread, 0), GREATEST(d.unseen, 0), 1 FROM delta d"
        f" WHERE d.unread <> 0 OR d.unseen <> 0"
        f" ON CONFLICT (user_id) DO UPDATE SET unread = GREATEST(c.unread + (SELECT unread FROM delta), 0),"
        f" unseen = GREATEST(c.unseen + (SELECT unseen FROM delta), 0), version = c.version + 1"
        f" RETURNING c.unread, c.unseen, c.version)"
        f" SELECT (SELECT array_agg(notification_id::text ORDER BY notification_id) FROM changed),"
        f" counter.unread, counter.unseen, counter.version FROM (SELECT 1) AS one LEFT JOIN counter ON TRUE"
    )


# Without a filter the unread and unseen counts are the user's counters (exact: kept in the transactions
# that change the rows) and only the total is counted; one statement, so all three are of one snapshot.
_COUNTS_FROM_COUNTERS = (
    "SELECT coalesce(c.unread, 0), coalesce(c.unseen, 0),"
    " (SELECT count(*) FROM notifications WHERE recipient_id = %(user)s AND archived_at IS NULL)"
    " FROM (SELECT 1) AS one LEFT JOIN unread_counters c ON c.user_id = %(user)s"
)
_COUNTS_FROM_ROWS = (
    "SELECT count(*) FILTER (WHERE read_at IS NULL), count(*) FILTER (WHERE seen_at IS NULL AND read_at IS NULL),"
    " count(*) FROM notifications WHERE recipient_id = %(user)s AND archived_at IS NULL"
)


def counts_sql(event_types: Sequence[str], priorities: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The counts of the bell: from the counters and the inbox index alone (index-only scans of
    notifications_recipient_inbox, migration 0007)."""
    if not event_types and not priorities:
        return _COUNTS_FROM_COUNTERS, {}
    clauses, params = InboxFilter(event_types=tuple(event_types), priorities=tuple(priorities)).clauses()
    extra = [c for c in clauses if c != "archived_at IS NULL"]
    return " AND ".join([_COUNTS_FROM_ROWS, *extra]), params


def page_sql(columns: str, clauses: Sequence[str]) -> str:
    """A page of a user's notifications, newest first: the seqs of the page are found in an index alone
    (every filter is on a column the inbox index holds), then only those rows are read."""
    where = " AND ".join(["recipient_id = %(user)s", *clauses])
    return (
        f"SELECT {columns} FROM notifications WHERE recipient_id = %(user)s AND seq = ANY(ARRAY("
        f"SELECT seq FROM notifications WHERE {where} ORDER BY seq DESC LIMIT %(limit)s)) ORDER BY seq DESC"
    )
