-- The pipeline: rules, the durable inbox, the transactional outbox and
-- followers. Claims use FOR UPDATE SKIP LOCKED: inside the deciding
-- transaction for inbound rows, with a lease (lease_owner, lease_until) for
-- outbound rows, whose sending happens outside any transaction. Dedup and
-- "never twice" are unique constraints.

-- Reply rules (the pubbot-rules model, one JSON document per rule).
CREATE TABLE rules (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    enabled    boolean     NOT NULL DEFAULT true,
    body       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION pubbot_rules_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pubbot_rules', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rules
    FOR EACH STATEMENT EXECUTE FUNCTION pubbot_rules_changed();

-- Every accepted push, once (R6 dedup key unique per app).
CREATE TABLE inbound_messages (
    id           bigserial   PRIMARY KEY,
    app_key      text        NOT NULL,
    mcid         text        NOT NULL,
    user_id      text        NOT NULL,
    msg_type     text        NOT NULL,
    dedup_key    text        NOT NULL,
    msg_id       text,
    create_time  bigint,
    message      json        NOT NULL, -- json, not jsonb: stored and read whole, never queried inside
    raw          text        NOT NULL,
    trace_id     text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'done')),
    processed_at timestamptz,
    UNIQUE (app_key, dedup_key)
);

CREATE INDEX inbound_pending ON inbound_messages (id) WHERE status = 'pending';

CREATE FUNCTION pubbot_inbound_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pubbot_inbound', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER inbound_added
    AFTER INSERT ON inbound_messages
    FOR EACH STATEMENT EXECUTE FUNCTION pubbot_inbound_added();

-- One row per planned reply; (inbound_id, reply_index) makes planning
-- idempotent, status 'sending' marks the window where a crash may send twice.
CREATE TABLE outbound_messages (
    id              bigserial   PRIMARY KEY,
    inbound_id      bigint      REFERENCES inbound_messages (id),
    reply_index     integer     NOT NULL,
    app_key         text        NOT NULL,
    mcid            text        NOT NULL,
    user_id         text        NOT NULL,
    rule_name       text        NOT NULL,
    payload         json        NOT NULL,
    trace_id        text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (inbound_id, reply_index)
);

CREATE INDEX outbound_due ON outbound_messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbound_sending ON outbound_messages (lease_until) WHERE status = 'sending';

CREATE FUNCTION pubbot_outbound_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pubbot_outbound', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbound_added
    AFTER INSERT ON outbound_messages
    FOR EACH STATEMENT EXECUTE FUNCTION pubbot_outbound_added();

-- Followers, from subscribe / unsubscribe events.
CREATE TABLE followers (
    app_key     text        NOT NULL,
    mcid        text        NOT NULL,
    user_id     text        NOT NULL,
    followed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_key, mcid, user_id)
);
