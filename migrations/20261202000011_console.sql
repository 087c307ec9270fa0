-- The web console (crates/daemon/src/console): its users, their sessions,
-- login attempts (for the rate limit) and the audit log. Every table here
-- is written by the console room only. Sessions live here, not in a
-- process, so any replica serves any request.

CREATE TABLE console_users (
    name          text        PRIMARY KEY,
    role          text        NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    -- argon2id PHC string; NULL for a user who signs in only through the
    -- trusted proxy header.
    password_hash text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- A session is found by the SHA-256 of its cookie value: the cookie itself
-- is never stored, so a read of this table does not give a session away.
CREATE TABLE console_sessions (
    token_hash bytea       PRIMARY KEY,
    user_name  text        NOT NULL REFERENCES console_users (name) ON DELETE CASCADE,
    csrf_token text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- Failed sign-ins by name and by client address, counted over a window.
CREATE TABLE console_login_failures (
    at        timestamptz NOT NULL DEFAULT now(),
    user_name text        NOT NULL,
    peer      text        NOT NULL
);
CREATE INDEX console_login_failures_user ON console_login_failures (user_name, at);
CREATE INDEX console_login_failures_peer ON console_login_failures (peer, at);

-- Who changed what, when: every change made through the console (and
-- console users added by the CLI).
CREATE TABLE console_audit (
    id     bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text        NOT NULL,
    action text        NOT NULL,
    target text        NOT NULL,
    detail jsonb
);

-- Concurrent edits of one rule are detected: an edit names the version it
-- was made from, and every write of a rule increases it.
ALTER TABLE rules ADD COLUMN version integer NOT NULL DEFAULT 1;

-- Human takeover: while a person holds a conversation (from the console),
-- the bot stays silent for that user; it resumes when released, or once
-- nothing was written to the user for `console.takeover_idle_secs`
-- (last_activity_at). Written by the pipeline room (pipeline/takeover.rs);
-- ingest stores a held user's push undecided, and deciding it plans
-- nothing while the hold is live.
CREATE TABLE takeovers (
    app_key          text        NOT NULL,
    mcid             text        NOT NULL,
    user_id          text        NOT NULL,
    held_by          text        NOT NULL,
    since            timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_key, mcid, user_id)
);
