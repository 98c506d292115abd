-- depends: 0008_preferences_digests
-- Web Push subscriptions (issue 20): one row per browser push endpoint, owned by one user.
--
-- The endpoint is unique: it names one browser profile's subscription, so when another user signs in
-- on that browser and subscribes, the row moves to them (the first user must not receive the second's
-- notifications). Keys are stored decoded (p256dh: the 65-byte uncompressed P-256 point, auth: 16 bytes).
-- subscribed_at is refreshed by every subscribe call and orders "the oldest dropped" beyond
-- web_push.max_subscriptions_per_user.
CREATE TABLE push_subscriptions (
  subscription_id bigserial PRIMARY KEY,
  user_id         text NOT NULL,
  endpoint        text NOT NULL UNIQUE,
  p256dh          bytea NOT NULL CHECK (octet_length(p256dh) = 65),
  auth            bytea NOT NULL CHECK (octet_length(auth) = 16),
  expires_at      timestamptz,
  subscribed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id, subscribed_at);
