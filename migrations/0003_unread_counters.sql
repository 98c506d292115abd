-- depends: 0002_notifications
-- Per-user unread count, kept in the same transactions that insert or mark notifications read, with a
-- version that grows with every change: the badge is O(1) to read, and a tab can drop a count that
-- arrives after a newer one (the version orders them; row locks on this table serialise the changes).
CREATE TABLE unread_counters (
  user_id  text PRIMARY KEY,
  unread   bigint NOT NULL DEFAULT 0,
  version  bigint NOT NULL DEFAULT 0
);

INSERT INTO unread_counters (user_id, unread, version)
SELECT recipient_id, count(*) FILTER (WHERE read_at IS NULL), 1
FROM notifications
GROUP BY recipient_id;
