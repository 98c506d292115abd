-- depends: 0004_retention_indexes
-- Storing a batch of events in ONE round trip (issue 11: the worker's CPU went to round trips, not
-- work): what NotificationRepository.store_events did in five statements (BEGIN, look up the pairs
-- already stored, bump counters, insert, COMMIT), as one function called in autocommit — it runs in
-- one transaction of its own.
--
-- The rules are the same as before:
-- * a (event, recipient) pair already stored is skipped and counted nowhere (idempotent retries);
-- * counters are bumped BEFORE the rows are inserted, in user order: that takes each recipient's
--   counter lock first (concurrent batches cannot deadlock), so one user's rows get their seq in
--   commit order and a catch-up "after seq N" never skips a row committed later with a lower seq;
-- * a pair a concurrent try of the same event stored first (ON CONFLICT DO NOTHING) is taken off its
--   user's counter again.
-- It returns the rows it inserted with their recipient's counter as the transaction leaves it.
CREATE OR REPLACE FUNCTION notify_store_events(
    p_event_ids text[], p_event_types text[], p_titles text[], p_bodies text[], p_priorities text[],
    p_action_urls text[], p_metadata text[], p_user_ids text[], p_emails text[], p_event_index int[]
) RETURNS TABLE (
    o_seq bigint, o_notification_id uuid, o_event_id text, o_recipient_id text, o_recipient_email text,
    o_created_at timestamptz, o_unread bigint, o_version bigint
) LANGUAGE plpgsql AS $fn$
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
BEGIN
    SELECT array_agg(r.uid ORDER BY r.ord), array_agg(r.email ORDER BY r.ord), array_agg(r.ev ORDER BY r.ord)
      INTO v_users, v_emails, v_events
      FROM unnest(p_user_ids, p_emails, p_event_index) WITH ORDINALITY AS r(uid, email, ev, ord)
     WHERE NOT EXISTS (
           SELECT 1 FROM notifications n WHERE n.event_id = p_event_ids[r.ev] AND n.recipient_id = r.uid);
    IF v_users IS NULL THEN
        RETURN;
    END IF;

    INSERT INTO unread_counters AS c (user_id, unread, version)
    SELECT u.uid, count(*), 1 FROM unnest(v_users) AS u(uid) GROUP BY u.uid ORDER BY u.uid
    ON CONFLICT (user_id) DO UPDATE SET unread = GREATEST(c.unread + EXCLUDED.unread, 0), version = c.version + 1;

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
        UPDATE unread_counters c
           SET unread = GREATEST(c.unread - d.missing, 0), version = c.version + 1
          FROM (SELECT w.uid, count(*) - coalesce((SELECT count(*) FROM unnest(v_ins_users) AS x(uid)
                                                    WHERE x.uid = w.uid), 0) AS missing
                  FROM unnest(v_users) AS w(uid) GROUP BY w.uid) AS d
         WHERE c.user_id = d.uid AND d.missing > 0;
    END IF;

    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT i.seq, i.id, i.ev, i.uid, i.email, i.created, c.unread, c.version
          FROM unnest(v_seqs, v_ids, v_ins_events, v_ins_users, v_ins_emails, v_created)
               AS i(seq, id, ev, uid, email, created)
          JOIN unread_counters c ON c.user_id = i.uid
         ORDER BY i.seq;
END
$fn$;
