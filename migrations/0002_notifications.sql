-- depends: 0001_sessions
-- One row per (event, recipient). `seq` gives a total order per insertion, used for the list cursor
-- and catch-up; notification_id is what clients see.
CREATE TABLE notifications (
  seq              bigint GENERATED ALWAYS AS IDENTITY,
  notification_id  uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
  recipient_id     text NOT NULL,
  recipient_email  text,
  event_id         text NOT NULL,
  event_type       text NOT NULL,
  title            text NOT NULL,
  body             text NOT NULL,
  priority         text NOT NULL CHECK (priority IN ('LOW', 'NORMAL', 'HIGH', 'URGENT')),
  action_url       text,
  metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at       timestamptz NOT NULL DEFAULT now(),
  read_at          timestamptz,
  CONSTRAINT notifications_event_recipient UNIQUE (event_id, recipient_id)
);

-- "newest of user X" (list, cursor, catch-up)
CREATE INDEX notifications_recipient_newest ON notifications (recipient_id, seq DESC);
-- "unread of user X" (badge count, read-all)
CREATE INDEX notifications_recipient_unread ON notifications (recipient_id, seq DESC) WHERE read_at IS NULL;
