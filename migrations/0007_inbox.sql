-- depends: 0006_store_events_custom_plans
-- transactional: false
-- The inbox (issue 18): seen and archived beside read, an `unseen` count beside `unread`, and the indexes
-- the inbox's lists, counts and retention walk.
--
-- Safe on a table of millions of rows (docs/benchmarks.md, "The inbox", has the figures on a million):
-- * No row of `notifications` is rewritten. The new columns are nullable without a default (a catalog
--   change), and rows read before this migration are not back-filled with a `seen_at`: "seen" is
--   `seen_at IS NOT NULL OR read_at IS NOT NULL` (marking read also marks seen), so they are seen already.
-- * Step 1 is one transaction (a DO block, as this file runs outside a transaction for CONCURRENTLY):
--   the columns, the store functions and the first `unseen` of every counter appear together, so no
--   batch is stored between them with a count left behind. It holds the two tables' locks only for
--   the counters' update (one row per user); `lock_timeout` makes it give up, rather than queue every
--   insert behind it, when a long transaction holds the table: run `migrate` again later.
--   Before it, nothing was seen or archived: each user's unseen count is their unread count.
-- * The indexes are built CONCURRENTLY (no insert waits for them), each dropped first so that a build
--   cut short (an INVALID index) is rebuilt by the next `migrate`, as in 0004.
--
-- Upgrading: the store function keeps its name, arguments and result for workers of the previous
-- release (it is now a wrapper of notify_store_events_v2 and counts `unseen` too); a node of the
-- previous release marking a notification read during the roll leaves that user's `unseen` one too high
-- until their next "seen" (roll the nodes right after migrating).
DO $step1$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'unread_counters'
                  AND column_name = 'unseen') THEN
        RETURN;  -- applied by an earlier run that stopped in the index builds below
    END IF;
    SET LOCAL lock_timeout = '5s';
    ALTER TABLE notifications ADD COLUMN seen_at timestamptz, ADD COLUMN archived_at timestamptz;
    ALTER TABLE unread_counters ADD COLUMN unseen bigint NOT NULL DEFAULT 0;

    -- What 0005 + 0006 defined, counting `unseen` (new rows are unseen and not archived) beside `unread`,
    -- and returning it; the counters come back from their bump rather than from a second look-up per
    -- row (which pays for the inbox's wider indexes: bench/store_path.py). The rules of 0005 are
    -- unchanged: pairs already stored are skipped; counters are bumped before the rows are inserted, in
    -- user order; pairs a concurrent try stored first are taken off again.
    CREATE FUNCTION notify_store_events_v2(
        p_event_ids text[], p_event_types text[], p_titles text[], p_bodies text[], p_priorities text[],
        p_action_urls text[], p_metadata text[], p_user_ids text[], p_emails text[], p_event_index int[]
    ) RETURNS TABLE (
        o_seq bigint, o_notification_id uuid, o_event_id text, o_recipient_id text, o_recipient_email text,
        o_created_at timestamptz, o_unread bigint, o_unseen bigint, o_version bigint
    ) LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $fn$
    DECLARE
        v_users text[];
        v_emails text[];
        v_events int[];
        v_seqs bigint[];
        v_ids uuid[];
        v_ins_events text[];
        v_ins_users text[];
        v_ins_emails text[];
        v_created timestamptz[];
        v_c_users text[];
        v_c_unread bigint[];
        v_c_unseen bigint[];
        v_c_version bigint[];
    BEGIN
        SELECT array_agg(r.uid ORDER BY r.ord), array_agg(r.email ORDER BY r.ord), array_agg(r.ev ORDER BY r.ord)
          INTO v_users, v_emails, v_events
          FROM unnest(p_user_ids, p_emails, p_event_index) WITH ORDINALITY AS r(uid, email, ev, ord)
         WHERE NOT EXISTS (
               SELECT 1 FROM notifications n WHERE n.event_id = p_event_ids[r.ev] AND n.recipient_id = r.uid);
        IF v_users IS NULL THEN
            RETURN;
        END IF;

        WITH bumped AS (
            INSERT INTO unread_counters AS c (user_id, unread, unseen, version)
            SELECT u.uid, count(*), count(*), 1 FROM unnest(v_users) AS u(uid) GROUP BY u.uid ORDER BY u.uid
            ON CONFLICT (user_id) DO UPDATE SET unread = GREATEST(c.unread + EXCLUDED.unread, 0),
                                                unseen = GREATEST(c.unseen + EXCLUDED.unseen, 0),
                                                version = c.version + 1
            RETURNING c.user_id, c.unread, c.unseen, c.version
        )
        SELECT array_agg(b.user_id), array_agg(b.unread), array_agg(b.unseen), array_agg(b.version)
          INTO v_c_users, v_c_unread, v_c_unseen, v_c_version FROM bumped b;

        WITH inserted AS (
            INSERT INTO notifications (recipient_id, recipient_email, event_id, event_type, title, body, priority,
                                       action_url, metadata)
            SELECT r.uid, r.email, p_event_ids[r.ev], p_event_types[r.ev], p_titles[r.ev], p_bodies[r.ev],
                   p_priorities[r.ev], p_action_urls[r.ev], p_metadata[r.ev]::jsonb
              FROM unnest(v_users, v_emails, v_events) WITH ORDINALITY AS r(uid, email, ev, ord)
             ORDER BY r.ord
            ON CONFLICT (event_id, recipient_id) DO NOTHING
            RETURNING seq, notification_id, event_id, recipient_id, recipient_email, created_at
        )
        SELECT array_agg(i.seq ORDER BY i.seq), array_agg(i.notification_id ORDER BY i.seq),
               array_agg(i.event_id ORDER BY i.seq), array_agg(i.recipient_id ORDER BY i.seq),
               array_agg(i.recipient_email ORDER BY i.seq), array_agg(i.created_at ORDER BY i.seq)
          INTO v_seqs, v_ids, v_ins_events, v_ins_users, v_ins_emails, v_created
          FROM inserted i;

        IF coalesce(cardinality(v_ids), 0) < cardinality(v_users) THEN
            -- Rare (a concurrent try stored some pairs first): the counters are read back from the table.
            v_c_users := NULL;
            UPDATE unread_counters c
               SET unread = GREATEST(c.unread - d.missing, 0), unseen = GREATEST(c.unseen - d.missing, 0),
                   version = c.version + 1
              FROM (SELECT w.uid, count(*) - coalesce((SELECT count(*) FROM unnest(v_ins_users) AS x(uid)
                                                        WHERE x.uid = w.uid), 0) AS missing
                      FROM unnest(v_users) AS w(uid) GROUP BY w.uid) AS d
             WHERE c.user_id = d.uid AND d.missing > 0;
        END IF;

        IF v_ids IS NULL THEN
            RETURN;
        END IF;
        IF v_c_users IS NULL THEN
            RETURN QUERY
                SELECT i.seq, i.id, i.ev, i.uid, i.email, i.created, c.unread, c.unseen, c.version
                  FROM unnest(v_seqs, v_ids, v_ins_events, v_ins_users, v_ins_emails, v_created)
                       AS i(seq, id, ev, uid, email, created)
                  JOIN unread_counters c ON c.user_id = i.uid
                 ORDER BY i.seq;
            RETURN;
        END IF;
        -- The counters as the bump left them (no second look-up per row).
        RETURN QUERY
            SELECT i.seq, i.id, i.ev, i.uid, i.email, i.created, c.unread, c.unseen, c.version
              FROM unnest(v_seqs, v_ids, v_ins_events, v_ins_users, v_ins_emails, v_created)
                   AS i(seq, id, ev, uid, email, created)
              JOIN unnest(v_c_users, v_c_unread, v_c_unseen, v_c_version) AS c(user_id, unread, unseen, version)
                ON c.user_id = i.uid
             ORDER BY i.seq;
    END
    $fn$;

    -- The previous release's entry point (its workers call it until they are replaced).
    CREATE OR REPLACE FUNCTION notify_store_events(
        p_event_ids text[], p_event_types text[], p_titles text[], p_bodies text[], p_priorities text[],
        p_action_urls text[], p_metadata text[], p_user_ids text[], p_emails text[], p_event_index int[]
    ) RETURNS TABLE (
        o_seq bigint, o_notification_id uuid, o_event_id text, o_recipient_id text, o_recipient_email text,
        o_created_at timestamptz, o_unread bigint, o_version bigint
    ) LANGUAGE sql AS $fn$
        SELECT o_seq, o_notification_id, o_event_id, o_recipient_id, o_recipient_email, o_created_at, o_unread,
               o_version
          FROM notify_store_events_v2(p_event_ids, p_event_types, p_titles, p_bodies, p_priorities,
                                      p_action_urls, p_metadata, p_user_ids, p_emails, p_event_index)
    $fn$;

    -- Locked in user order, as the store function and the prune lock counters: no deadlock with them.
    UPDATE unread_counters AS c SET unseen = c.unread
      FROM (SELECT user_id FROM unread_counters ORDER BY user_id FOR UPDATE) AS locked
     WHERE c.user_id = locked.user_id;
END
$step1$;

-- "Newest of user X" with the three states, the event type and the priority in the index: the inbox's
-- lists (filtered by read, seen, archived, type, priority) find their page, and the counts their numbers,
-- in the index alone (index-only scans), not in the table. It replaces both of 0002's indexes on
-- (recipient_id, seq): notifications_recipient_newest (the same keys) and notifications_recipient_unread
-- (an unread list is this index with a filter; "unread of user X" for read-all is 0004's
-- notifications_unread_recipient_created). So a stored row updates one index fewer than before — the
-- store path is cheaper (bench/store_path.py), and so is every change of a state. (A second index by type
-- and priority made counts by type faster but every stored row 7-10 % dearer: docs/benchmarks.md.)
DROP INDEX CONCURRENTLY IF EXISTS notifications_recipient_inbox;
CREATE INDEX CONCURRENTLY notifications_recipient_inbox ON notifications (recipient_id, seq DESC)
  INCLUDE (event_type, priority, read_at, seen_at, archived_at);
DROP INDEX CONCURRENTLY IF EXISTS notifications_recipient_newest;
DROP INDEX CONCURRENTLY IF EXISTS notifications_recipient_unread;

-- The lists and counts above read their indexes alone only where the visibility map says a page holds no
-- row changed since the last vacuum; otherwise each entry costs a visit to the table (18 ms instead of
-- 1 for a heavy user's counts right after their bulk actions, bench/inbox.py). By default autovacuum
-- waits for a fifth of the table to change (200,000 rows of a million); vacuum this table after 2 %
-- instead (a vacuum skips the pages that are still all-visible, so it stays cheap on a large table).
ALTER TABLE notifications SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);

-- Retention: archived notifications that were never read, by when they were archived
-- (notify_server/storage/retention.py; read ones go by read_at, as before).
DROP INDEX CONCURRENTLY IF EXISTS notifications_archived_unread;
CREATE INDEX CONCURRENTLY notifications_archived_unread ON notifications (archived_at)
  WHERE archived_at IS NOT NULL AND read_at IS NULL;
