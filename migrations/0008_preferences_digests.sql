-- depends: 0007_inbox
-- Issue 19: what each user chose to receive, and the digest windows of noisy event types.
--
-- notification_preferences: one row per user who made a choice, holding only the explicit ones
-- ({"channels": {...}, "categories": {...}, "event_types": {...}}, notify_server/core/preferences.py);
-- users without a row get everything. Workers read the rows of a batch's recipients in one query.
CREATE TABLE notification_preferences (
  user_id     text PRIMARY KEY,
  settings    jsonb NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The worker's check that none of a small batch's recipients holds preferences, in the store's own statement
-- (`SELECT * FROM notify_store_events(...) WHERE notify_require_no_preferences(...)`): true when none does,
-- else it raises NP001, which fails the statement whole — nothing is stored; the worker then reads their
-- preferences and stores what they allow. STABLE (it reads, never writes) and given only a constant, so
-- Postgres checks it once before the store runs (a one-time filter); were it checked row by row instead,
-- a failing check would still undo every row the statement inserted.
CREATE FUNCTION notify_require_no_preferences(p_user_ids text) RETURNS boolean LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM notification_preferences
                WHERE user_id IN (SELECT jsonb_array_elements_text(p_user_ids::jsonb))) THEN
        RAISE EXCEPTION 'a recipient holds preferences' USING ERRCODE = 'NP001';
    END IF;
    RETURN true;
END
$fn$;
-- Planned per call (like the store function, 0006): a plan cached while the table was empty would scan it
-- whole for every batch once it holds millions of users.
ALTER FUNCTION notify_require_no_preferences(text) SET plan_cache_mode = force_custom_plan;

-- digest_windows: per (user, digest type), the window opened by the last event delivered at once:
-- events of that type for that user arriving before due_at are held. The row is also the lock that
-- orders everything about the pair: a batch deciding "now or held" and a flush ending the window both
-- take it first, so a held event can never join a window that a flush has already delivered.
CREATE TABLE digest_windows (
  user_id         text NOT NULL,
  event_type      text NOT NULL,
  first_event_id  text,          -- the event that opened the window (a retry of it is still delivered at once)
  due_at          timestamptz NOT NULL,
  PRIMARY KEY (user_id, event_type)
);
CREATE INDEX digest_windows_due ON digest_windows (due_at);

-- digest_held: the events held in a window, one row per (event, user), until the window's digest is
-- stored. A delivered row is kept (without its values) for a day: a job retried after its window ended
-- finds it and is not delivered a second time.
CREATE TABLE digest_held (
  event_id      text NOT NULL,
  user_id       text NOT NULL,
  event_type    text NOT NULL,
  due_at        timestamptz NOT NULL,   -- the end of the window it was held in: one digest per (user, type, due_at)
  held_seq      bigint GENERATED ALWAYS AS IDENTITY,  -- the latest held event fills the digest's placeholders
  email         text,
  priority      text NOT NULL,
  action_url    text,
  vals          jsonb,                  -- the digest templates' values from this event; NULL once delivered
  delivered_at  timestamptz,
  PRIMARY KEY (event_id, user_id)
);
CREATE INDEX digest_held_pending ON digest_held (due_at) WHERE delivered_at IS NULL;
CREATE INDEX digest_held_delivered ON digest_held (delivered_at) WHERE delivered_at IS NOT NULL;

-- Decides, for a batch's (event, recipient) pairs of digest types, which are delivered now and which are
-- held, and holds them; returns the ordinals (1-based, in the order given) of the held pairs. One call,
-- one transaction (autocommit), whatever the batch holds. The events come as arrays (one element per
-- event), the pairs as one JSON array of [user_id, email, event index (1-based)]: a 10,000-recipient
-- event costs the worker one string instead of three lists quoted element by element.
--
-- * The pairs' windows are locked first, in (user, type) order, by one upsert: concurrent batches cannot
--   deadlock, and a flush (which locks the same rows) has committed or waits for this one.
-- * The clock is read after those locks, so "the window is still open" is decided against the same
--   time line a flush uses: what a flush delivered can never be joined later.
-- * A pair already stored as a notification (a retried job) is delivered again (the store skips it and
--   the pipeline re-pushes it); a pair already held (pending or delivered) stays held: a retried job
--   never produces a second notification or a second count.
-- * Otherwise, per (user, type) in the order given: inside an open window a pair is held (unless it is
--   the event that opened it); with no open window the first pair is delivered now and opens one of its
--   type's length, the following ones of the same batch are held in it.
CREATE FUNCTION notify_digest_route(
    p_event_ids text[], p_event_types text[], p_windows_s float8[], p_priorities text[], p_action_urls text[],
    p_values text[], p_pairs text
) RETURNS SETOF int LANGUAGE plpgsql AS $fn$
DECLARE
    v_now timestamptz;
    v_users text[];
    v_emails text[];
    v_events int[];
    v_ords int[];
    v_held boolean[];
    v_new boolean[];
    v_opens boolean[];
    v_due timestamptz[];
BEGIN
    SELECT array_agg(x.e->>0 ORDER BY x.ord), array_agg(x.e->>1 ORDER BY x.ord), array_agg((x.e->>2)::int ORDER BY x.ord)
      INTO v_users, v_emails, v_events
      FROM jsonb_array_elements(p_pairs::jsonb) WITH ORDINALITY AS x(e, ord);
    IF v_users IS NULL THEN
        RETURN;
    END IF;

    INSERT INTO digest_windows AS w (user_id, event_type, due_at)
    SELECT DISTINCT x.uid, p_event_types[x.ev], '-infinity'::timestamptz
      FROM unnest(v_users, v_events) AS x(uid, ev)
     ORDER BY 1, 2
    ON CONFLICT (user_id, event_type) DO UPDATE SET due_at = w.due_at;

    v_now := clock_timestamp();

    WITH pairs AS (
        SELECT x.ord::int AS ord, p_event_ids[x.ev] AS ev, x.uid, p_event_types[x.ev] AS typ, p_windows_s[x.ev] AS win,
               EXISTS (SELECT 1 FROM notifications n
                        WHERE n.event_id = p_event_ids[x.ev] AND n.recipient_id = x.uid) AS stored,
               EXISTS (SELECT 1 FROM digest_held h WHERE h.event_id = p_event_ids[x.ev] AND h.user_id = x.uid) AS known
          FROM unnest(v_users, v_events) WITH ORDINALITY AS x(uid, ev, ord)
    ), ranked AS (
        SELECT p.*, (NOT p.stored AND NOT p.known) AS fresh,
               row_number() OVER (PARTITION BY p.uid, p.typ, (NOT p.stored AND NOT p.known) ORDER BY p.ord) AS rank,
               w.due_at > v_now AS open, w.due_at, w.first_event_id
          FROM pairs p JOIN digest_windows w ON w.user_id = p.uid AND w.event_type = p.typ
    )
    SELECT array_agg(r.ord ORDER BY r.ord),
           array_agg(CASE WHEN r.stored THEN false
                          WHEN r.known THEN true
                          WHEN r.open THEN r.ev IS DISTINCT FROM r.first_event_id
                          ELSE r.rank > 1 END ORDER BY r.ord),
           array_agg(r.fresh ORDER BY r.ord),
           array_agg(r.fresh AND NOT r.open AND r.rank = 1 ORDER BY r.ord),
           array_agg(CASE WHEN r.open THEN r.due_at ELSE v_now + make_interval(secs => r.win) END ORDER BY r.ord)
      INTO v_ords, v_held, v_new, v_opens, v_due
      FROM ranked r;

    UPDATE digest_windows w
       SET due_at = d.due, first_event_id = p_event_ids[v_events[d.ord]]
      FROM unnest(v_ords, v_opens, v_due) AS d(ord, opens, due)
     WHERE d.opens AND w.user_id = v_users[d.ord] AND w.event_type = p_event_types[v_events[d.ord]];

    INSERT INTO digest_held (event_id, user_id, event_type, due_at, email, priority, action_url, vals)
    SELECT p_event_ids[v_events[d.ord]], v_users[d.ord], p_event_types[v_events[d.ord]], d.due, v_emails[d.ord],
           p_priorities[v_events[d.ord]], p_action_urls[v_events[d.ord]], p_values[v_events[d.ord]]::jsonb
      FROM unnest(v_ords, v_held, v_new, v_due) AS d(ord, held, fresh, due)
     WHERE d.held AND d.fresh
     ORDER BY d.ord
    ON CONFLICT (event_id, user_id) DO NOTHING;

    RETURN QUERY SELECT d.ord FROM unnest(v_ords, v_held) AS d(ord, held) WHERE d.held ORDER BY d.ord;
END
$fn$;

-- Planned per call, like notify_store_events (0006): the tables start empty and grow.
ALTER FUNCTION notify_digest_route(text[], text[], float8[], text[], text[], text[], text)
    SET plan_cache_mode = force_custom_plan;
