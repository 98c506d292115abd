-- depends: 0003_unread_counters
-- transactional: false
-- What the prune (notify_server/retention.py) walks instead of scanning whole tables: notifications
-- read before a cutoff (oldest first), unread ones created before a cutoff (user by user, so a batch
-- changes few users' counters), sessions expired or revoked before a cutoff (oldest first).
--
-- Built CONCURRENTLY: by the time this runs the tables may hold millions of rows, and a plain CREATE
-- INDEX would block every insert (every event) for the whole build. CONCURRENTLY cannot run inside a
-- transaction, hence `transactional: false` above: yoyo then runs each statement on its own, in
-- autocommit. A build that fails half-way leaves an INVALID index, which IF NOT EXISTS would keep as
-- it is; so each index is dropped first, and running the migration again rebuilds it.
DROP INDEX CONCURRENTLY IF EXISTS notifications_read_at;
CREATE INDEX CONCURRENTLY notifications_read_at ON notifications (read_at) WHERE read_at IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS notifications_unread_recipient_created;
CREATE INDEX CONCURRENTLY notifications_unread_recipient_created ON notifications (recipient_id, created_at)
  WHERE read_at IS NULL;

DROP INDEX CONCURRENTLY IF EXISTS sessions_expires_at;
CREATE INDEX CONCURRENTLY sessions_expires_at ON sessions (expires_at);

DROP INDEX CONCURRENTLY IF EXISTS sessions_revoked_at;
CREATE INDEX CONCURRENTLY sessions_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
