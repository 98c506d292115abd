"""Retention: deleting the notifications and sessions that `retention.*` no longer keeps, in short batches.

Four kinds of rows go (each cutoff is taken once, when a prune starts):
- read notifications: read before now - `read_days` (archived or not);
- archived notifications never read: archived before now - `read_days` (archiving is the other way of
  being done with one: it leaves the inbox and its counts, as reading does);
- unread notifications: created before now - `unread_days` (0 = never);
- sessions: expired, or revoked, before now - `sessions_days`.

Each kind is walked along its index (migration 0004) — oldest first; unread ones user by user — at
most `batch_rows` rows per statement, and every batch is its own short transaction: inserts and reads
never wait long behind a prune. Rows someone holds locked are skipped (`SKIP LOCKED`) and left to the
next prune. Between batches the prune pauses (PAUSE_PER_BATCH), so live events keep their share of the
database.

Unread counts stay exact: a batch of unread notifications lowers each recipient's counters (unread, and
unseen for those not seen; archived ones are counted nowhere) by the rows it deleted and bumps the
version, in the batch's transaction. The rows are locked first, then the
counters in user order — read_one / read_all take a row and then its counter, and store_events takes
counters in user order — so no batch can deadlock with them. The new counts go to `push_counts` (the
routing path to the users' open tabs) once the batch has committed.

One prune at a time across every process sharing the database: a session-level advisory lock, tried
without waiting; a second prune that finds it held does nothing and says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from notify_server.core.settings import RetentionSettings
from notify_server.core.stores import describe, unavailable
from notify_server.core.supervisor import stopping
from notify_server.storage.db import Database
from notify_server.storage.notifications import UnreadState

logger = logging.getLogger("notify.retention")

PRUNE_LOCK_KEY = 0x6E6F746966797072  # "notifypr": the advisory lock only one prune holds at a time
# After each batch a prune pauses this many times as long as the batch took: it keeps the database busy
# half the time at most, and live events keep their latency; it deletes at about half speed (README
# "Retention" has the figures, bench/prune.py measures them).
PAUSE_PER_BATCH = 1.0
KINDS = ("read", "unread", "archived", "sessions")

CountsPush = Callable[[Mapping[str, UnreadState]], Awaitable[object]]


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """Rows of each kind a prune deleted (or, for a dry run, would delete)."""

    read: int = 0
    unread: int = 0
    sessions: int = 0
    dry_run: bool = False
    archived: int = 0  # archived and never read (issue 18)

    @property
    def total(self) -> int:
        return self.read + self.unread + self.archived + self.sessions

    def summary(self) -> str:
        """`read=3 unread=2 archived=0 sessions=1`, as the command prints it and the worker logs it."""
        return f"read={self.read} unread={self.unread} archived={self.archived} sessions={self.sessions}"


@dataclasses.dataclass(frozen=True)
class _Walk:
    """One kind's rows, along one index: `where` AND `cutoff_column` < the kind's cutoff, in `order`."""

    kind: str
    table: str
    cutoff_column: str
    order: tuple[str, ...]  # the index's columns: the walk goes on after the last row of a batch
    where: str


# Trusted SQL fragments only (no value from outside ever reaches these strings). Sessions take two walks
# (expired, then revoked), each along its own index: one OR over both would be a bitmap scan that reads
# every entry below the cutoff again for each batch. Unread notifications go user by user: a batch then
# changes the counters of a few users, not of up to batch_rows users (each counter stays locked until the
# batch commits, and live events of those users wait for it).
_WALKS = (
    _Walk("read", "notifications", "read_at", ("read_at",), "read_at IS NOT NULL"),
    _Walk("archived", "notifications", "archived_at", ("archived_at",), "archived_at IS NOT NULL AND read_at IS NULL"),
    _Walk("unread", "notifications", "created_at", ("recipient_id", "created_at"), "read_at IS NULL"),
    _Walk("sessions", "sessions", "expires_at", ("expires_at",), "TRUE"),
    _Walk("sessions", "sessions", "revoked_at", ("revoked_at",), "revoked_at IS NOT NULL"),
)

# How many rows of each kind are due, for a dry run: the same predicates as the walks, in their order (an
# archived unread row due by both rules is the archived walk's: it runs first).
_COUNTS = {
    "read": "SELECT count(*) FROM notifications WHERE read_at IS NOT NULL AND read_at < %(read)s",
    "archived": "SELECT count(*) FROM notifications WHERE archived_at IS NOT NULL AND read_at IS NULL"
                " AND archived_at < %(archived)s",
    "unread": "SELECT count(*) FROM notifications WHERE read_at IS NULL AND created_at < %(unread)s"
              " AND NOT (archived_at IS NOT NULL AND archived_at < %(archived)s)",
    "sessions": "SELECT count(*) FROM sessions WHERE expires_at < %(sessions)s"
                " OR (revoked_at IS NOT NULL AND revoked_at < %(sessions)s)",
}


def _batch_sql(walk: _Walk, *, resume: bool) -> str:
    """Lock and delete the next batch of one walk in one statement (`resume`: after the row whose `order`
    values are %(after_0)s, %(after_1)s…, which may have peers). One row back — the batch's last `order`
    values, rows deleted, and for unread notifications the recipients in user order with the rows each
    lost (those counted: not archived) and how many of those were unseen — or none when nothing was left
    to delete."""
    columns = ", ".join(walk.order)
    keys = ", ".join(f"{column} AS k{i}" for i, column in enumerate(walk.order))
    after = ", ".join(f"%(after_{i})s" for i in range(len(walk.order)))
    last = ", ".join(f"k{i}" for i in range(len(walk.order)))
    newest_first = ", ".join(f"k{i} DESC" for i in range(len(walk.order)))
    unread = walk.kind == "unread"
    return (
        f"WITH batch AS ("
        f" SELECT ctid, {keys} FROM {walk.table}"
        f" WHERE {walk.where} AND {walk.cutoff_column} < %(cutoff)s"
        + (f" AND ({columns}) >= ({after})" if resume else "")
        + f" ORDER BY {columns} LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
        # Deleted by physical address (a TID scan), not joined back by key: a join of the batch to the
        # table may be planned as a hash join over a scan of the whole table.
        f" gone AS (DELETE FROM {walk.table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM batch))"
        f" RETURNING {'recipient_id, archived_at IS NULL AS counted, seen_at IS NULL AS unseen' if unread else '1'})"
        + (", per_user AS (SELECT recipient_id AS u, count(*) AS n, count(*) FILTER (WHERE unseen) AS m"
           " FROM gone WHERE counted GROUP BY recipient_id)" if unread else "")
        + f" SELECT {last}, (SELECT count(*) FROM gone),"
        + (" (SELECT array_agg(u ORDER BY u) FROM per_user), (SELECT array_agg(n ORDER BY u) FROM per_user),"
           " (SELECT array_agg(m ORDER BY u) FROM per_user)" if unread else " NULL, NULL, NULL")
        + f" FROM (SELECT {last} FROM batch ORDER BY {newest_first} LIMIT 1) AS last"
    )


# The recipients' counters, locked in user order (as store_events locks them), then lowered by the rows
# each lost, one new version each. A user without a counter row had nothing counted: nothing to lower.
_LOWER_COUNTERS = (
    "SELECT 1 FROM unread_counters WHERE user_id = ANY(%(users)s) ORDER BY user_id FOR UPDATE;"
    " UPDATE unread_counters AS c SET unread = GREATEST(c.unread - d.n, 0), unseen = GREATEST(c.unseen - d.m, 0),"
    " version = c.version + 1"
    " FROM unnest(%(users)s::text[], %(counts)s::bigint[], %(unseen)s::bigint[]) AS d(u, n, m) WHERE c.user_id = d.u"
    " RETURNING c.user_id, c.unread, c.version, c.unseen"
)


class Pruner:
    """`prune()` deletes what retention no longer keeps; `count()` says how much that would be."""

    def __init__(self, db: Database, settings: RetentionSettings, *, push_counts: CountsPush | None = None) -> None:
        self._db = db
        self._settings = settings
        self._push_counts = push_counts

    async def count(self) -> PruneResult:
        """The dry run: rows of each kind a prune started now would delete. Takes no lock, deletes nothing."""
        async with self._db.connection() as conn, conn.cursor() as cur:
            cutoffs = await self._cutoffs(cur)
            counts = dict.fromkeys(KINDS, 0)
            for kind, sql in _COUNTS.items():
                if cutoffs[kind] is not None:
                    await cur.execute(sql, cutoffs)
                    row = await cur.fetchone()
                    counts[kind] = int(row[0])
        return PruneResult(read=counts["read"], unread=counts["unread"], archived=counts["archived"],
                           sessions=counts["sessions"], dry_run=True)

    async def prune(self) -> PruneResult | None:
        """Delete every row due, batch by batch; None (and nothing done) when another prune holds the lock.

        Rows deleted before a failure stay deleted (each batch commits on its own); the next prune goes on.
        """
        async with self._db.connection() as conn, conn.cursor() as cur:
            await cur.execute("SELECT pg_try_advisory_lock(%s)", (PRUNE_LOCK_KEY,))
            row = await cur.fetchone()
            if not row[0]:
                return None
            try:
                cutoffs = await self._cutoffs(cur)
                counts = dict.fromkeys(KINDS, 0)
                for walk in _WALKS:
                    cutoff = cutoffs[walk.kind]
                    if cutoff is not None:
                        counts[walk.kind] += await self._walk(conn, cur, walk, cutoff)
            finally:
                # An error that broke the connection took the lock with it (the session ended); aiopg
                # closes the connection when the prune is cancelled mid-statement, which does the same.
                if not conn.closed:
                    await cur.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK_KEY,))
        return PruneResult(read=counts["read"], unread=counts["unread"], archived=counts["archived"],
                           sessions=counts["sessions"])

    async def _cutoffs(self, cur: Any) -> dict[str, dt.datetime | None]:
        """{kind: delete rows older than this}, from the database's clock; None for a kind kept for ever."""
        settings = self._settings
        await cur.execute(
            "SELECT now() - make_interval(days => %s), now() - make_interval(days => %s),"
            " now() - make_interval(days => %s)",
            (settings.read_days, settings.unread_days, settings.sessions_days),
        )
        read, unread, sessions = await cur.fetchone()
        return {"read": read, "archived": read, "unread": unread if settings.unread_days > 0 else None,
                "sessions": sessions}

    async def _walk(self, conn: Any, cur: Any, walk: _Walk, cutoff: dt.datetime) -> int:
        """Delete one kind's rows older than `cutoff` along one index, batch after batch; rows deleted."""
        params: dict[str, Any] = {"cutoff": cutoff, "limit": self._settings.batch_rows}
        sql = _batch_sql(walk, resume=False)
        deleted = 0
        while True:
            started = time.monotonic()
            if walk.kind == "unread":
                row, states = await self._unread_batch(conn, cur, sql, params)
                if states:
                    await self._push(states)
            else:
                await cur.execute(sql, params)  # autocommit: the statement is its own transaction
                row = await cur.fetchone()
            stopping()  # a stop the statement's wait_for swallowed: end the prune between batches
            if row is None:  # nothing left below the cutoff (but rows others held locked)
                return deleted
            await asyncio.sleep((time.monotonic() - started) * PAUSE_PER_BATCH)
            deleted += int(row[len(walk.order)])
            # Keyset: the next batch starts at this one's last row (>=: rows sharing its values may
            # remain), so it does not wade again through the index entries of the rows just deleted.
            params.update({f"after_{i}": value for i, value in enumerate(row[: len(walk.order)])})
            sql = _batch_sql(walk, resume=True)

    @staticmethod
    async def _unread_batch(
        conn: Any, cur: Any, sql: str, params: dict[str, Any]
    ) -> tuple[tuple[Any, ...] | None, dict[str, UnreadState]]:
        """One batch of unread notifications and its counters, in one transaction: (the batch's row of
        _batch_sql, the new unread state of each user who lost rows).

        BEGIN / COMMIT by hand, not `cur.begin()`: when a prune is cancelled mid-statement (a worker
        stopping, Ctrl-C) aiopg closes the connection, which rolls the transaction back; aiopg's context
        manager would then try a ROLLBACK on the closed connection and raise InterfaceError in place of
        the cancellation, and the supervisor would restart the prune it was asked to stop.
        """
        await cur.execute("BEGIN")
        try:
            await cur.execute(sql, params)
            row = await cur.fetchone()
            states: dict[str, UnreadState] = {}
            if row is not None and row[-3]:
                await cur.execute(_LOWER_COUNTERS, {"users": row[-3], "counts": row[-2], "unseen": row[-1]})
                states = {r[0]: UnreadState(int(r[1]), int(r[2]), int(r[3])) for r in await cur.fetchall()}
        except BaseException:
            if not conn.closed:
                await cur.execute("ROLLBACK")
            raise
        await cur.execute("COMMIT")
        return row, states

    async def _push(self, states: Mapping[str, UnreadState]) -> None:
        """The lowered counts to the users' open tabs. The counts are committed already: when Redis is
        away the tabs keep their old count until the next change, and the prune goes on."""
        if self._push_counts is None:
            return
        try:
            await self._push_counts(states)
        except Exception as exc:
            if not unavailable(exc):
                raise
            logger.warning("unread counts of %d user(s) not pushed after a prune batch (%s)", len(states),
                           describe(exc))
