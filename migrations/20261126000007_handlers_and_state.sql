-- Handler bots (rules whose answer comes from a URL) and per-user
-- conversation state.

CREATE TABLE handlers (
    name        text        PRIMARY KEY,
    url         text        NOT NULL,
    -- Signs the calls (Standard Webhooks); never logged.
    secret      text        NOT NULL,
    timeout_ms  integer     NOT NULL DEFAULT 3000 CHECK (timeout_ms > 0),
    concurrency integer     NOT NULL DEFAULT 8 CHECK (concurrency > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A small JSON object per (app, account, user), changed in the deciding
-- transaction (or the one that records a handler's answer), so a step is
-- never applied twice. Expired rows read as empty and are pruned.
CREATE TABLE conversation_state (
    app_key    text        NOT NULL,
    mcid       text        NOT NULL,
    user_id    text        NOT NULL,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (app_key, mcid, user_id)
);

-- A handler's replies take the place of its call in the conversation:
-- (push, reply index, sub index), the call being sub index 0.
ALTER TABLE outbound_messages ADD COLUMN sub_index integer NOT NULL DEFAULT 0;
ALTER TABLE outbound_messages ADD COLUMN handler text;
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_inbound_id_reply_index_key;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_planned_once
    UNIQUE (inbound_id, reply_index, sub_index);
DROP INDEX outbound_open_by_user;
CREATE INDEX outbound_open_by_user ON outbound_messages (app_key, mcid, user_id, inbound_id, reply_index, sub_index)
    WHERE status IN ('pending', 'sending');
-- A user's next push is decided only once their open handler call is
-- answered (it may change the state the next push is decided by).
CREATE INDEX outbound_open_handlers ON outbound_messages (app_key, mcid, user_id)
    WHERE handler IS NOT NULL AND status IN ('pending', 'sending');
