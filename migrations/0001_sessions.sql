-- The session store: the integration contract with the web app's login (SPEC §6).
-- A session is valid iff its row exists, revoked_at IS NULL and expires_at > now().
-- Tokens are never stored in clear: token_hash is the lower-case hex sha256 of the token.
CREATE TABLE sessions (
  token_hash  text PRIMARY KEY,
  user_id     text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  revoked_at  timestamptz
);

CREATE INDEX sessions_user_id ON sessions (user_id);
